"""The FastAPI application: built by `create_app(settings)`, wired in its lifespan (no clients at import time)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from core import __version__
from core.connections import async_redis_client
from core.errors import ConfigurationError
from core.keys import KeyStore, Scope
from core.models.device import resolve_device
from core.registry.notices import follow
from core.settings import AccessLog, FeatureSourceKind, RedisType, Settings
from inference_api import errors
from inference_api.auth import require_unless_public
from inference_api.domain.batching import DynamicBatcher
from inference_api.domain.features import FeastFeatureSource, FeatureSource
from inference_api.domain.models import ModelManager
from inference_api.domain.redis_source import RedisFeatureSource
from inference_api.domain.score_log import Sampling, ScoreLog, feast_sampling
from inference_api.domain.scoring import ScoringService
from inference_api.domain.single import score_singles
from inference_api.middleware import RequestContext
from inference_api.monitoring import keep_refreshed
from inference_api.observability import Metrics
from inference_api.routes import admin, console, fraud, models, oip
from inference_api.routes.fast_score import PATH as FAST_PATH
from inference_api.routes.fast_score import FastScore

log = logging.getLogger("fraudserve.api")
NOTICE_BLOCK_S = 5.0  # one blocking read of the registry's change notices
TELEMETRY_CHECK_S = 1.0  # how often the hot path asks FastAPI whether OpenTelemetry is configured


class FraudserveAPI(FastAPI):
    """FastAPI with a shorter way in for `POST /v1/fraud/score`: straight to `RequestContext` (and the lean route
    inside it) under Starlette's `ServerErrorMiddleware` with the app's own handler of unexpected errors, as the
    full stack would, without FastAPI's per-request telemetry check (whether an OpenTelemetry provider is set: about
    10 us a request, `bench.hotpath --only http`) and its telemetry and body-limit middlewares, which do nothing
    without OpenTelemetry or `max_body_size` (the body limit is `RequestContext`'s). With OpenTelemetry configured
    (checked at most once a second) every request takes FastAPI's way, traced as before."""

    _hot: ASGIApp | None = None
    _telemetry_checked = float("-inf")
    _telemetry_on = True

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == FAST_PATH and self._short_way():
            if self.root_path:
                scope["root_path"] = self.root_path
            scope["app"] = self
            assert self._hot is not None
            await self._hot(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _short_way(self) -> bool:
        now = time.monotonic()
        if now - self._telemetry_checked >= TELEMETRY_CHECK_S:
            self._telemetry_checked = now
            self._telemetry_on = self._native_telemetry.enabled() or self.max_body_size is not None
        if self._telemetry_on:
            return False
        if self._hot is None:
            if self.middleware_stack is None:
                self.middleware_stack = self.build_middleware_stack()
            self._hot = _hot_stack(self.middleware_stack, self.exception_handlers)
        return self._hot is not False


def _hot_stack(stack: ASGIApp, handlers: dict[Any, Any]) -> Any:
    """`RequestContext` of the built stack with the lean route right inside it, under a `ServerErrorMiddleware` of
    the app's handler of unexpected errors; False when the stack has no lean route (an app built without it)."""
    layer: Any = stack
    while layer is not None and not isinstance(layer, RequestContext):
        layer = getattr(layer, "app", None)
    if layer is None or not isinstance(layer.app, FastScore):
        return False
    handler = handlers.get(500) or handlers.get(Exception)
    return ServerErrorMiddleware(layer, handler=handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from feast import FeatureStore

        from core.registry import open_model_registry

        if not settings.redis:
            raise ConfigurationError("FRAUDSERVE_REDIS is not set: run the API with `fraudserve serve`, which sets it")
        settings.export_feast_environment(settings.redis)
        store = FeatureStore(repo_path=str(settings.feature_repo))
        budget = settings.request_budget_ms / 1000
        source: FeatureSource = (
            RedisFeatureSource(store, budget)
            if settings.feature_source is FeatureSourceKind.redis
            else FeastFeatureSource(store, budget)
        )
        manager = ModelManager(
            open_model_registry(settings),
            store,
            settings.model_name,
            device=resolve_device(settings.device.value),
            keep_candidate=settings.canary_percent > 0 or settings.shadow_candidate,
            reasons=settings.reasons_method,
            on_failure=lambda name: metrics.model_failures.labels(name).inc(),
        )
        await asyncio.to_thread(manager.refresh)
        app.state.source = source
        app.state.models = manager
        scoring = ScoringService(
            source, manager, metrics, settings.top_reasons, settings.canary_percent, settings.shadow_candidate
        )
        app.state.scoring = scoring
        default = Sampling(settings.score_log_sample, settings.score_log_dir)
        score_log = ScoreLog(
            default,
            feast_sampling(store, default),
            max_rows=settings.score_log_queue_rows,
            flush_s=settings.score_log_flush_seconds,
            on_drop=metrics.score_log_dropped.inc,
            on_write=metrics.score_log_rows.inc,
        )
        score_log.start()
        app.state.score_log = score_log
        batcher = DynamicBatcher(
            # The single score's own path (domain/single.py), `score_requests` whenever a batch needs its generality.
            functools.partial(score_singles, scoring),
            max_size=settings.batch_max_size,
            max_delay_s=settings.batch_max_delay_ms / 1000,
            # One batch in flight: the requests that arrive while it awaits Redis gather into the next, larger one
            # (a batch of 8 costs about a third of the CPU per request of 8 batches of 1, bench.hotpath). Against two
            # in flight: 1.18x requests/s and 0.84x CPU per request at 8 connections (3 alternating rounds, load 3.7).
            max_inflight=1,
            max_queue=settings.batch_max_waiting,
            on_batch=metrics.batch,
        )
        batcher.start()
        app.state.batcher = batcher
        watcher = asyncio.create_task(manager.watch(settings.model_poll_seconds))
        flusher = asyncio.create_task(metrics.keep_flushed())  # the hot path's pending metrics, every FLUSH_S
        gauges = asyncio.create_task(
            keep_refreshed(settings, manager.registry, metrics, settings.monitor_refresh_seconds)
        )
        # Registry change notices (core/registry/notices.py): a promotion is served within a round trip
        # instead of a poll interval; the poll above stays as the fallback.
        notice_client = async_redis_client(
            settings.redis,
            settings.redis_type is RedisType.redis_cluster,
            socket_timeout=NOTICE_BLOCK_S + 5,
            socket_connect_timeout=NOTICE_BLOCK_S + 5,
        )
        follower = asyncio.create_task(
            follow(notice_client, settings.model_name, lambda: asyncio.to_thread(manager.refresh),
                   block_ms=int(NOTICE_BLOCK_S * 1000))
        )  # fmt: skip
        # Start-up objects (Feast, pandas, protobuf, the model) live as long as the process: moved out of the
        # collector's reach, so that a full collection does not walk a million of them in the middle of a request.
        gc.collect()
        gc.freeze()
        log.info("ready", extra={"model": settings.model_name, "loaded": manager.state.production is not None})
        try:
            yield
        finally:
            await batcher.close()
            for task in (watcher, follower, gauges, flusher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            metrics.flush()
            await notice_client.aclose()
            await asyncio.to_thread(score_log.close)  # after the batcher: every answered score is written
            await scoring.close()  # score:batch's lookup connections
            if isinstance(source, RedisFeatureSource):
                await source.close()

    app = FraudserveAPI(
        title="fraudserve",
        version=__version__,
        description="Payments fraud scoring on Feast features: score by transaction id, generic predict, KServe v2.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.keys = KeyStore(settings.keys_file)
    errors.install(app)
    app.add_middleware(FastScore)  # inside RequestContext: POST /v1/fraud/score without FastAPI's per-request work
    app.add_middleware(
        RequestContext,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        log_all=settings.access_log is AccessLog.all,
        slow_s=settings.request_budget_ms / 1000,
    )
    app.include_router(fraud.router)
    app.include_router(models.router)
    app.include_router(oip.router)
    app.include_router(admin.router)
    app.include_router(console.router)
    app.include_router(console.pages)

    metrics_guard = [require_unless_public("metrics_public", Scope.admin)]

    @app.get("/metrics", tags=["operations"], response_class=Response, dependencies=metrics_guard)
    async def prometheus(request: Request) -> Response:
        manager: ModelManager | None = getattr(request.app.state, "models", None)
        if manager is not None:
            for alias, model in (("production", manager.state.production), ("candidate", manager.state.candidate)):
                if model is not None:
                    metrics.model_version.labels(model.name, alias).set(model.version)
            metrics.models_loaded.set(len(manager.state.by_version))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
