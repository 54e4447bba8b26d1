"""API memory under a steady load: resident memory of each worker process over a soak, and its trend.

    python -m bench.soak [--minutes 10] [--workers 2] [--connections 8] [--home DIR]

Builds (or reuses, with --home) the same deployment as bench.api, starts `fraudserve serve --workers N`, loads it
with score-by-id requests at a fixed number of connections for the whole soak, and samples each worker's RSS
(from /proc) every few seconds. Prints per worker: RSS after warm-up, at the end, the peak, and the least-squares
slope over the soak after the first minute (MB per 10 minutes); writes bench/results/soak-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console

from bench.api import embedded_store, prepare, wait_ready
from bench.load import run_load
from bench.report import machine, print_table, write_result
from core.embedded_redis import free_port


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _workers(server: int) -> list[int]:
    """uvicorn's worker processes (python children of the server), or the server itself with one worker."""
    workers = []
    for pid in _children(server):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
            if "python" in command and "resource_tracker" not in command:
                workers.append(pid)
    return workers or [server]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--sample-seconds", type=float, default=5)
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--home", type=Path, help="reuse the deployment bench.api built here")
    args = parser.parse_args()
    console = Console()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    with contextlib.ExitStack() as stack:
        root, settings, connection = embedded_store(stack, args.home, "fraudserve-soak-")
        recent = prepare(root, settings, connection, args.cards, args.days, console)
        bodies: list[dict[str, object]] = [{"transaction_id": r[0]} for r in recent]
        port = free_port()
        log = (root / "soak-api.log").open("w")
        server = subprocess.Popen(
            [sys.executable, "-m", "fraudserve", "serve", "--workers", str(args.workers), "--port", str(port)],
            env={**os.environ, **settings.feast_environment(connection)},
            stdout=log,
            stderr=log,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/v1/fraud/score", bodies[0])
            run_load("127.0.0.1", port, "/v1/fraud/score", bodies, args.connections, 20)  # warm-up
            workers = _workers(server.pid)
            samples: dict[int, list[tuple[float, float]]] = {w: [] for w in workers}
            done = threading.Event()

            def sample() -> None:
                started = time.monotonic()
                while not done.is_set():
                    for worker in workers:
                        rss = _rss_mb(worker)
                        if rss is not None:
                            samples[worker].append((time.monotonic() - started, rss))
                    done.wait(args.sample_seconds)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            console.print(
                f"soaking {len(workers)} worker(s) for {args.minutes:g} min at {args.connections} connections"
            )
            load = run_load("127.0.0.1", port, "/v1/fraud/score", bodies, args.connections, args.minutes * 60)
            done.set()
            sampler.join()
        finally:
            server.terminate()
            server.wait(timeout=30)

    rows = []
    per_worker = {}
    for worker, points in samples.items():
        t = np.array([p[0] for p in points])
        rss = np.array([p[1] for p in points])
        steady = t >= 60  # the first minute: allocator and caches settling
        slope = float(np.polyfit(t[steady], rss[steady], 1)[0]) * 600 if steady.sum() > 2 else float("nan")
        per_worker[str(worker)] = {
            "rss_start_mb": float(rss[0]),
            "rss_end_mb": float(rss[-1]),
            "rss_peak_mb": float(rss.max()),
            "slope_mb_per_10min": slope,
            "samples": points,
        }
        rows.append(
            (str(worker), f"{rss[0]:.1f}", f"{rss[-1]:.1f}", f"{rss.max():.1f}", f"{slope:+.2f}")
        )  # fmt: skip
    result["load"] = load.summary()
    result["workers"] = per_worker
    print_table(
        console,
        f"API RSS over a {args.minutes:g}-minute soak, {args.workers} worker(s), {args.connections} connections, "
        f"{load.requests:,} requests ({load.rps:,.0f}/s, {load.errors} errors)",
        ("worker pid", "RSS start MB", "RSS end MB", "peak MB", "trend MB/10 min (after 1 min)"),
        rows,
    )
    write_result(console, "soak", result)


if __name__ == "__main__":
    main()
