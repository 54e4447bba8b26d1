"""One ASGI middleware for every request: request id (echoed as X-Request-ID), body size limit, access log, metrics.

The access log writes one JSON line per request (`FRAUDSERVE_ACCESS_LOG=all`) or, by default, only for errors and
slow requests (`errors`): at thousands of requests a second a line each costs more CPU than the feature fetch, and
the per-route counts and latencies are in /metrics either way.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_api.observability import Metrics

log = logging.getLogger("fraudserve.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _RequestIds:
    """32 hex digits per request, unique across processes: a random 64-bit prefix drawn once per process (again in a
    forked child) and a counter. As opaque as `uuid4().hex` to a reader, at a tenth of its cost (no getrandom call
    per request)."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._counter = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():
            self._pid, self._prefix, self._counter = os.getpid(), os.urandom(8).hex(), itertools.count()
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = _RequestIds()


def _too_large(limit: int) -> bytes:
    return json.dumps(
        {"error": {"code": "payload_too_large", "message": f"request body exceeds {limit} bytes; send smaller "
                   "batches", "details": {"limit_bytes": limit}}}
    ).encode()  # fmt: skip


_PACKAGE_UPLOAD = re.compile(r"^/v1/admin/models/[^/]+/versions$")


class RequestContext:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, max_body_bytes: int, log_all: bool = True, slow_s: float = 0.25
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.log_all = log_all  # False: only errors (4xx, 5xx) and requests slower than `slow_s` are logged
        self.slow_s = slow_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if incoming and _SAFE_ID.match(incoming) else _request_ids.next()
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        limit = self.max_body_bytes
        if scope.get("method") == "POST" and _PACKAGE_UPLOAD.match(scope.get("path", "")):
            # A model package (registration over HTTP) has its own, larger limit.
            limit = max(limit, scope["app"].state.settings.max_package_bytes)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._reject(send_with_id, limit)
            self._done(scope, request_id, status["code"], started)
            return

        seen = {"bytes": 0}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            await self._reject(send_with_id, limit)
        self._done(scope, request_id, status["code"], started)

    async def _reject(self, send: Any, limit: int) -> None:
        body = _too_large(limit)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})  # fmt: skip
        self.metrics.error("payload_too_large")

    def _answered(self, served: Any, seconds: float) -> None:
        """Latency by the model version that answered (the console's canary against production): a route sets
        `request.state.served` to the version of a single score, or to one per scored item of a batch (score:batch,
        models predict, OIP infer). Counted per request: each version that answered any item of it observes the
        request's whole latency once (a batch split by the canary share counts for both versions)."""
        if hasattr(served, "version"):  # one version (the single score: the hot path)
            self.metrics.answered(served.name, served.version, seconds)
            return
        for name, version in dict.fromkeys((ref.name, ref.version) for ref in served):
            self.metrics.answered(name, version, seconds)

    def _done(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        self.metrics.request(path, status)
        if path.startswith("/v1/fraud/score"):
            self.metrics.stage("total", seconds)
        served = scope["state"].get("served")
        if served is not None:
            self._answered(served, seconds)
        if not self.log_all and status < 400 and seconds < self.slow_s:
            return
        log.info(
            "request",
            extra={"request_id": request_id, "method": scope.get("method"), "path": scope.get("path"),
                   "status": status, "ms": round(seconds * 1000, 3)},
        )  # fmt: skip


class _BodyTooLarge(Exception):
    pass
