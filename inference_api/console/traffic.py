"""Live traffic for the console: snapshots of the service's counters, kept in a small rolling window.

A `Snapshot` copies the cumulative counters of `Metrics` (scores by version and label, request latency by version,
errors by code, HTTP statuses); the rates and percentiles are differences between two snapshots divided by the
time between them, as Prometheus's `rate()` and `histogram_quantile()` compute them. Snapshots are taken when the
console asks (at most one a second), never on the scoring path.

Whole service, not the one process that answers: under `fraudserve serve --workers N` every worker's counters live
in prometheus_client's multiprocess files (one file per process and metric type, under FRAUDSERVE_HOME/run/), and a
snapshot sums them all, as `/metrics` does; with one process its own registry is the whole service.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from inference_api.observability import MULTIPROCESS_FLAG, Metrics

Version = tuple[str, int]  # (model, version)


@dataclass(frozen=True)
class Histogram:
    """Cumulative bucket counts (upper bound -> observations at or below it, +Inf last), their sum and count."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    total: float

    def minus(self, earlier: Histogram | None) -> Histogram:
        if earlier is None or self.count < earlier.count:  # first seen, or a restart: everything is new
            return self
        before = dict(earlier.buckets)
        return Histogram(
            tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
            self.count - earlier.count,
            self.total - earlier.total,
        )

    def quantile(self, q: float) -> float | None:
        """Prometheus's histogram_quantile: linear within the bucket holding rank q*count; None without data."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):  # past the last finite bound: the best answer is that bound
                    return lower
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
            lower, below = le, cumulative
        return lower


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    scores: Mapping[tuple[str, int, str], float] = field(default_factory=dict)  # (model, version, label) -> count
    latency: Mapping[Version, Histogram] = field(default_factory=dict)
    errors: Mapping[str, float] = field(default_factory=dict)
    statuses: Mapping[int, float] = field(default_factory=dict)  # HTTP status -> requests (every route)
    processes: int = 1  # API processes whose counters are summed (workers of `serve --workers N`, dead ones too)


def _increase(now: Mapping[Any, float], before: Mapping[Any, float]) -> dict[Any, float]:
    """Per key, how much a counter grew (a counter that went down restarted: its whole value is new)."""
    out = {}
    for key, value in now.items():
        earlier = before.get(key, 0.0)
        out[key] = value - earlier if value >= earlier else value
    return out


def shared_metrics_dir() -> Path | None:
    """The folder of prometheus_client's multiprocess files when `fraudserve serve --workers N` set it up (the rule
    `Metrics.render` follows: Feast sets PROMETHEUS_MULTIPROC_DIR on import even for one process); else None."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if os.environ.get(MULTIPROCESS_FLAG) and directory and os.path.isdir(directory):
        return Path(directory)
    return None


def _families(metrics: Metrics) -> tuple[dict[str, Metric], int]:
    """The counter and histogram families by name, every worker's summed when there are several, and how many
    processes they come from."""
    directory = shared_metrics_dir()
    if directory is None:
        return {family.name: family for family in metrics.registry.collect()}, 1
    # Only the counter and histogram files: gauges (and their per-process modes) are not read here.
    files = sorted(str(p) for p in (*directory.glob("counter_*.db"), *directory.glob("histogram_*.db")))
    pids = {Path(f).stem.rsplit("_", 1)[-1] for f in files}
    merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
    return {family.name: family for family in merged}, max(len(pids), 1)


def _name(metric: Any) -> str:
    name: str = metric.describe()[0].name
    return name


def _samples(families: Mapping[str, Metric], metric: Any, suffix: str) -> Iterable[tuple[dict[str, str], float]]:
    family = families.get(_name(metric))
    for sample in family.samples if family is not None else ():
        if sample.name.endswith(suffix):
            yield sample.labels, float(sample.value)


def _histogram(families: Mapping[str, Metric], metric: Any) -> Iterable[tuple[dict[str, str], float, str]]:
    family = families.get(_name(metric))
    if family is None:
        return
    for sample in family.samples:
        yield sample.labels, float(sample.value), sample.name.removeprefix(family.name)


def take(metrics: Metrics, at: float | None = None) -> Snapshot:
    """The counters of `metrics` now: the whole service's (every worker's, summed)."""
    families, processes = _families(metrics)
    scores = {
        (labels["model"], int(labels["version"]), labels["label"]): value
        for labels, value in _samples(families, metrics.labels, "_total")
    }
    buckets: dict[Version, list[tuple[float, float]]] = {}
    counts: dict[Version, float] = {}
    sums: dict[Version, float] = {}
    for labels, value, suffix in _histogram(families, metrics.version_latency):
        key = (labels["model"], int(labels["version"]))
        if suffix == "_bucket":
            buckets.setdefault(key, []).append((float(labels["le"]), value))
        elif suffix == "_count":
            counts[key] = value
        elif suffix == "_sum":
            sums[key] = value
    latency = {key: Histogram(tuple(sorted(b)), counts.get(key, 0.0), sums.get(key, 0.0)) for key, b in buckets.items()}
    errors = {labels["code"]: value for labels, value in _samples(families, metrics.errors, "_total")}
    statuses: dict[int, float] = {}
    for labels, value in _samples(families, metrics.requests, "_total"):
        status = int(labels["status"])
        statuses[status] = statuses.get(status, 0.0) + value
    return Snapshot(time.monotonic() if at is None else at, scores, latency, errors, statuses, processes)


def compare(earlier: Snapshot, later: Snapshot) -> dict[str, Any]:
    """What happened between two snapshots: per version its scores a second, label mix and latency p50/p99 (ms),
    and the errors and HTTP statuses by code, each with its count and rate."""
    seconds = max(later.at - earlier.at, 1e-9)
    scored = _increase(later.scores, earlier.scores)
    versions: dict[Version, dict[str, Any]] = {}
    for (model, version, label), n in sorted(scored.items()):
        entry = versions.setdefault((model, version), {"model": model, "version": version, "scores": 0.0, "labels": {}})
        entry["scores"] += n
        entry["labels"][label] = n
    for key in later.latency:
        versions.setdefault(key, {"model": key[0], "version": key[1], "scores": 0.0, "labels": {}})
    for key, entry in versions.items():
        entry["per_second"] = entry["scores"] / seconds
        histogram = later.latency.get(key)
        window = histogram.minus(earlier.latency.get(key)) if histogram else None
        p50 = window.quantile(0.5) if window else None
        p99 = window.quantile(0.99) if window else None
        entry["requests"] = window.count if window else 0.0
        entry["p50_ms"] = None if p50 is None else p50 * 1000
        entry["p99_ms"] = None if p99 is None else p99 * 1000
    errors = _increase(later.errors, earlier.errors)
    statuses = _increase(later.statuses, earlier.statuses)
    return {
        "seconds": seconds,
        "versions": [versions[k] for k in sorted(versions)],
        "errors": [{"code": c, "count": n, "per_second": n / seconds} for c, n in sorted(errors.items()) if n > 0],
        "statuses": [
            {"status": s, "count": n, "per_second": n / seconds} for s, n in sorted(statuses.items()) if n > 0
        ],
    }


class TrafficWindow:
    """The last `keep_s` seconds of snapshots, at least `spacing_s` apart; rates over about the last `rate_s`."""

    def __init__(self, keep_s: float = 300.0, rate_s: float = 30.0, spacing_s: float = 1.0) -> None:
        self.keep_s = keep_s
        self.rate_s = rate_s
        self.spacing_s = spacing_s
        self.snapshots: deque[Snapshot] = deque()
        self._lock = threading.Lock()

    def add(self, snapshot: Snapshot) -> None:
        with self._lock:
            if self.snapshots and snapshot.at - self.snapshots[-1].at < self.spacing_s:
                self.snapshots[-1] = snapshot  # too close to the last one: it replaces it
            else:
                self.snapshots.append(snapshot)
            while self.snapshots and snapshot.at - self.snapshots[0].at > self.keep_s:
                self.snapshots.popleft()

    def summary(self) -> dict[str, Any]:
        """The rates over the last `rate_s` seconds or a little more (what is kept, while less), and the series of
        scores a second per version between consecutive snapshots (seconds before the newest, oldest first)."""
        with self._lock:
            kept = list(self.snapshots)
        processes = kept[-1].processes if kept else 1
        if len(kept) < 2:
            return {"seconds": 0.0, "versions": [], "errors": [], "statuses": [], "series": [], "processes": processes}
        newest = kept[-1]
        # From the newest snapshot at least `rate_s` old (the oldest kept while none is that old).
        start = next((s for s in reversed(kept) if newest.at - s.at >= self.rate_s), kept[0])
        summary = compare(start, newest)
        series = []
        for before, after in itertools.pairwise(kept):
            step = compare(before, after)
            series.append(
                {"ago_s": newest.at - after.at,
                 "per_second": {f"{v['model']}:{v['version']}": v["per_second"] for v in step["versions"]}}
            )  # fmt: skip
        summary["series"] = series
        summary["processes"] = processes
        return summary
