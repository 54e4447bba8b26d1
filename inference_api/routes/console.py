"""The operator console: its page and assets (open: they hold no data), and the admin JSON it reads (traffic
from the app's own metrics, feature freshness and the stream, the monitoring report)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from core.connections import redis_client
from core.errors import RedisUnavailable
from core.keys import Scope
from core.settings import Settings
from inference_api.auth import require
from inference_api.console import ASSETS, FILES
from inference_api.console.status import Cached, StreamRate, feature_views, log_window, quality_report, stream
from inference_api.console.traffic import TrafficWindow, take
from inference_api.domain.models import ModelManager
from inference_api.schemas import ErrorResponse

# The page and its files may reach this API only: no other host, no inline script, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "unauthorized"},
    403: {"model": ErrorResponse, "description": "forbidden"},
    422: {"model": ErrorResponse, "description": "invalid_request"},
    503: {"model": ErrorResponse, "description": "features_unavailable (the online store did not answer)"},
}

T = TypeVar("T")

pages = APIRouter(tags=["console"], include_in_schema=False)
router = APIRouter(prefix="/v1/admin/console", tags=["admin"], dependencies=[require(Scope.admin)])


@pages.get("/console")
async def page() -> FileResponse:
    return FileResponse(ASSETS / "index.html", media_type=FILES["index.html"], headers=SECURITY_HEADERS)


@pages.get("/console/{name}")
async def asset(name: str) -> FileResponse:
    if name not in FILES:
        raise HTTPException(404)
    return FileResponse(ASSETS / name, media_type=FILES[name], headers=SECURITY_HEADERS)


class ConsoleState:
    """The console's state in the app: the traffic window, caches and one Redis client, made on first use."""

    def __init__(self, settings: Settings) -> None:
        self.traffic = TrafficWindow()
        self.features: Cached[dict[str, Any]] = Cached(ttl_s=5.0)
        self.quality: Cached[dict[str, Any]] = Cached(ttl_s=30.0)
        self.stream_rate = StreamRate()
        self.client = redis_client(settings, settings.redis or "", timeout_s=2.0)
        # The freshness scan and the monitoring report run on threads of their own, not on asyncio's default
        # executor: there, a slow report (a large score log, a loaded machine) would queue the admin actions and the
        # model refreshes that share it (a promotion by click was once not served for minutes).
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="console")

    async def run(self, compute: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, compute)


def _state(request: Request) -> ConsoleState:
    state: ConsoleState | None = getattr(request.app.state, "console", None)
    if state is None:
        state = request.app.state.console = ConsoleState(request.app.state.settings)
    return state


@router.get("/traffic", responses=ERRORS)
async def traffic(request: Request, response: Response) -> dict[str, Any]:
    """Scores a second, label mix and latency p50/p99 per model version, errors and HTTP statuses by code, over the
    last 30 s of the whole service's counters (every worker's, summed: `processes`; rates need two looks by the
    process that answers, `process`: the first answers after a start have none), with what serves: production and
    candidate versions, the canary share and shadow mode."""
    state = _state(request)
    state.traffic.add(take(request.app.state.metrics))
    settings: Settings = request.app.state.settings
    manager: ModelManager | None = getattr(request.app.state, "models", None)
    production = manager.state.production if manager else None
    candidate = manager.state.candidate if manager else None
    response.headers["Cache-Control"] = "no-store"
    return {
        **state.traffic.summary(),
        "process": os.getpid(),
        "serving": {
            "model": settings.model_name,
            "production": production.version if production else None,
            "candidate": candidate.version if candidate else None,
            "canary_percent": settings.canary_percent,
            "shadow": settings.shadow_candidate,
            "loaded": [{"model": n, "version": v} for n, v in sorted(manager.state.by_version)] if manager else [],
            "load_error": manager.state.last_error if manager else None,
        },
    }


@router.get("/features", responses=ERRORS)
async def features(request: Request) -> dict[str, Any]:
    """Every feature view with its entity, TTL and freshness online (age of the newest row among sampled keys),
    and the stream: lag, pending entries, events a second and dead letters."""
    state = _state(request)
    settings: Settings = request.app.state.settings
    manager: ModelManager = request.app.state.models

    def compute() -> dict[str, Any]:
        try:
            views = feature_views(settings, state.client, manager.store.project)
        except RedisError as exc:
            raise RedisUnavailable(f"the online store did not answer the freshness scan: {exc}") from exc
        out: dict[str, Any] = {"views": views}
        try:
            found = stream(settings, state.client)
            found["per_second"] = state.stream_rate.update(found["counters"].get("processed", 0))
            out["stream"] = found
        except Exception as exc:  # the views are worth showing without the stream
            out["stream"] = {"error": str(exc)}
        return out

    return await state.run(lambda: state.features.get(None, compute))


Days = Annotated[int, Query(ge=1, le=90, description="Days of the score log to report on.")]


@router.get("/quality", responses=ERRORS)
async def quality(request: Request, days: Days = 7) -> dict[str, Any]:
    """The monitoring report (as `fraudserve monitor report --json`) of the served model over the last `days`."""
    state = _state(request)
    settings: Settings = request.app.state.settings
    manager: ModelManager = request.app.state.models

    def compute() -> dict[str, Any]:
        files = log_window(settings, days)  # kept while no file is added, for 30 s at most
        return state.quality.get(
            (days, files), lambda: quality_report(settings, manager.registry, files, days, settings.model_name)
        )

    return await state.run(compute)
