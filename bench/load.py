"""A small closed-loop HTTP/1.1 load generator (keep-alive connections on asyncio streams, little overhead)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def summary(self) -> dict[str, float]:
        return {"requests": self.requests, "errors": self.errors, "rps": self.rps, "p50_ms": self.pct(50),
                "p99_ms": self.pct(99)}  # fmt: skip


async def _connection(
    host: str, port: int, path: str, body_for: Callable[[int], bytes], until: float, out: list[float], errs: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    while time.perf_counter() < until:
        body = body_for(i)
        i += 1
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        started = time.perf_counter()
        writer.write(request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            errs.append(0)  # the server closed the connection: count it, reconnect
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            continue
        length = 0
        status = int(head.split(b" ", 2)[1])
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        out.append((time.perf_counter() - started) * 1000)
        if status != 200:
            errs.append(status)
    writer.close()


def run_load(
    url_host: str, port: int, path: str, bodies: list[dict[str, object]], connections: int, seconds: float
) -> LoadResult:
    encoded = [json.dumps(b).encode() for b in bodies]

    async def main() -> LoadResult:
        latencies: list[float] = []
        errors: list[int] = []
        started = time.perf_counter()
        until = started + seconds

        def bodies_of(c: int) -> Callable[[int], bytes]:
            return lambda i: encoded[(i * connections + c) % len(encoded)]

        await asyncio.gather(
            *(_connection(url_host, port, path, bodies_of(c), until, latencies, errors) for c in range(connections))
        )
        return LoadResult(len(latencies), len(errors), time.perf_counter() - started, np.array(latencies))

    return asyncio.run(main())
