"""Prometheus metrics, structured JSON logs and request ids."""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

MULTIPROCESS_FLAG = "FRAUDSERVE_METRICS_MULTIPROCESS"
STAGES = ("transaction_lookup", "feature_fetch", "predict", "total")
FLUSH_S = 0.25  # how often the app writes the hot path's pending metrics (Metrics.keep_flushed)
_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The API's metrics, in one registry per app (so tests and several apps in a process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._pending = _Pending()
        self.registry.register(_FlushFirst(self._pending))  # first in the registry: a collection flushes, then reads
        weakref.finalize(self, self._pending.flush)  # and at the process's exit (or when this goes away)
        self.latency = Histogram(
            "fraudserve_stage_seconds", "Latency by stage of a scoring request", ["stage"],
            buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            "fraudserve_http_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.labels = Counter(
            "fraudserve_scores", "Scores by label and model version", ["model", "version", "label"],
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter("fraudserve_errors", "Errors by code", ["code"], registry=self.registry)
        self.model_version = Gauge(
            "fraudserve_model_version", "Loaded version by alias", ["model", "alias"], registry=self.registry
        )
        self.models_loaded = Gauge(
            "fraudserve_models_loaded", "Model versions held in memory (production, candidate and recent others)",
            registry=self.registry,
        )  # fmt: skip
        self.model_failures = Counter(
            "fraudserve_model_load_failures", "Versions that failed to load", ["model"], registry=self.registry
        )
        self.batch_size = Histogram(
            "fraudserve_batch_size", "Requests per dynamic batch (single score requests scored together)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry,
        )  # fmt: skip
        self.score_log_dropped = Counter(
            "fraudserve_score_log_dropped", "Scores not written to the score log (its queue full, or a failed write)",
            registry=self.registry,
        )  # fmt: skip
        self.score_log_rows = Counter(
            "fraudserve_score_log_rows", "Scores written to the score log", registry=self.registry
        )
        # Drift and quality, recomputed from the score log by a background task (inference_api/monitoring.py).
        self.feature_psi = Gauge(
            "fraudserve_feature_psi", "PSI of a feature: served traffic against the training reference",
            ["model", "version", "feature"], registry=self.registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.score_psi = Gauge(
            "fraudserve_score_psi", "PSI of the score: served traffic against the training reference",
            ["model", "version"], registry=self.registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.quality = Gauge(
            "fraudserve_labelled_quality", "Latest quality of a version on the served transactions labelled so far",
            ["model", "version", "metric"], registry=self.registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        # Per served version (single score requests), so the console can put canary and production side by side.
        self.version_latency = Histogram(
            "fraudserve_version_request_seconds", "Latency of a score request by the model version that answered it",
            ["model", "version"], buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._stages: dict[str, Any] = {}
        self._versions: dict[tuple[str, int], Any] = {}
        self._scores: dict[tuple[str, int, str], Any] = {}
        self._requests: dict[tuple[str, int], Any] = {}
        self.shadow_delta = Histogram(
            "fraudserve_shadow_abs_difference", "|candidate - served| score in shadow mode", ["candidate_version"],
            buckets=(0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0), registry=self.registry,
        )  # fmt: skip

    # The hot path's series are kept in plain Python (`_Pending`) and written to their prometheus_client children by
    # `flush`: with PROMETHEUS_MULTIPROC_DIR set (Feast sets it on import) each child's write is an mmap write with
    # a lock and a pid check, 12 per single score, about 5-7 % of its in-process CPU (cProfile, 4,000 requests).
    # Flushed before every read of the registry (`render`, a collection), and every FLUSH_S by the app, so another
    # worker's /metrics and the console see them at most that late.
    def batch(self, size: int) -> None:
        self._pending.observe(self.batch_size, size)

    # The hot path's children are looked up once: `labels()` costs more than the observation itself.
    def stage(self, stage: str, seconds: float) -> None:
        child = self._stages.get(stage)
        if child is None:
            child = self._stages[stage] = self.latency.labels(stage)
        self._pending.observe(child, seconds)

    def scored(self, model: str, version: int, label: str, count: int = 1) -> None:
        key = (model, version, label)
        child = self._scores.get(key)
        if child is None:
            child = self._scores[key] = self.labels.labels(model, str(version), label)
        self._pending.inc(child, count)

    def answered(self, model: str, version: int, seconds: float) -> None:
        key = (model, version)
        child = self._versions.get(key)
        if child is None:
            child = self._versions[key] = self.version_latency.labels(model, str(version))
        self._pending.observe(child, seconds)

    def request(self, route: str, status: int) -> None:
        key = (route, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(route, str(status))
        self._pending.inc(child, 1)

    def flush(self) -> None:
        """Write the hot path's pending counts and observations to their series."""
        self._pending.flush()

    async def keep_flushed(self, interval_s: float = FLUSH_S) -> None:
        """Flush every `interval_s` (the app runs it as a task), so that other processes reading the multiprocess
        files (another worker's /metrics, the console) see this worker's counts at most that late."""
        while True:
            await asyncio.sleep(interval_s)
            self.flush()

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def shadow(self, version: int, difference: float) -> None:
        self.shadow_delta.labels(str(version)).observe(difference)

    def render(self) -> bytes:
        self.flush()
        # Only when `fraudserve serve --workers N` asked for it: Feast sets PROMETHEUS_MULTIPROC_DIR on import.
        if os.environ.get(MULTIPROCESS_FLAG) and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))


class _Pending:
    """Counter increments and histogram observations not yet written to their prometheus_client children: a count
    per counter child; per histogram child its sum and a count per bucket (the first bucket whose upper bound is at
    or above the value, as `Histogram.observe` picks it). `flush` writes them with the children's own value
    objects, so the series read exactly as if each had been observed (tests/unit/test_observability_metrics.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Any, float] = {}
        self._histograms: dict[Any, list[float]] = {}  # child -> [sum, count of bucket 0, 1, ...]

    def inc(self, child: Any, amount: float) -> None:
        with self._lock:
            self._counts[child] = self._counts.get(child, 0) + amount

    def observe(self, child: Any, value: float) -> None:
        if math.isnan(value):  # NaN: no bucket takes it; prometheus_client's own observe, as before
            child.observe(value)
            return
        bounds = child._upper_bounds
        with self._lock:
            pending = self._histograms.get(child)
            if pending is None:
                pending = self._histograms[child] = [0.0] * (len(bounds) + 1)
            pending[0] += value
            pending[bisect.bisect_left(bounds, value) + 1] += 1

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
            histograms, self._histograms = self._histograms, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, (total, *buckets) in histograms.items():
            child._sum.inc(total)
            for value, count in zip(child._buckets, buckets, strict=True):
                if count:
                    value.inc(count)


class _FlushFirst(Collector):
    """Registered first in the app's registry: any collection (the console's traffic, `generate_latest`) writes the
    pending counts before the series are read. It exposes no series of its own."""

    def __init__(self, pending: _Pending) -> None:
        self.pending = pending

    def collect(self) -> Iterable[Metric]:
        self.pending.flush()
        return []

    def describe(self) -> Iterable[Metric]:
        return []


_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every `extra` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("fraudserve")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
