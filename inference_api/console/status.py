"""What the console reads besides traffic: the feature views' freshness online and the stream, and the monitoring
report. Each is computed in a thread when the console asks, and kept for a few seconds (`Cached`), so that several
open consoles cost one computation; none of it runs on the scoring path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from core.registry import ModelRegistry
from core.score_log import log_files
from core.settings import Settings

T = TypeVar("T")
FRESHNESS_SAMPLE = 2000  # online keys scanned for the newest rows (a lower bound of freshness past that)


class Cached(Generic[T]):
    """The last value of `compute` for `ttl_s` seconds (per key); one computation at a time."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._values: dict[Any, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Callable[[], T]) -> T:
        with self._lock:
            kept = self._values.get(key)
            if kept is not None and time.monotonic() - kept[0] < self.ttl_s:
                return kept[1]
            value = compute()
            self._values[key] = (time.monotonic(), value)
            return value


def feature_views(settings: Settings, client: Any, project: str, now: float | None = None) -> list[dict[str, Any]]:
    """Every feature view of the repo: its entity's join key, TTL and the age of its newest row online (seconds;
    None when no row of it was seen among the sampled keys), as `fraudserve features list` shows them."""
    from pipelines.features.catalog import TRANSACTION_VIEW, load_catalog
    from pipelines.freshness import newest_rows

    catalog = load_catalog(settings.feature_repo)
    newest = newest_rows(client, project, FRESHNESS_SAMPLE)
    moment = time.time() if now is None else now

    def view(name: str, entity: str | None, ttl: float | None, kind: str, features: int) -> dict[str, Any]:
        stamp = newest.get(name)
        return {"view": name, "entity": entity, "kind": kind, "features": features, "ttl_s": ttl,
                "age_s": None if stamp is None else max(moment - stamp, 0.0),
                "stale": stamp is not None and bool(ttl) and moment - stamp > (ttl or 0)}  # fmt: skip

    views = [
        view(w.view, w.join_key, w.ttl.total_seconds() or None, "windows", len(w.features))
        for w in catalog.window_views
    ]
    views += [
        view(b.view, b.join_key, b.ttl.total_seconds() if b.ttl else None, "batch", len(b.features))
        for b in catalog.batch_views
    ]
    views.append(view(TRANSACTION_VIEW, catalog.transaction.join_key, None, "events", len(catalog.transaction_fields)))
    views += [
        {"view": name, "entity": None, "kind": "on demand", "features": None, "ttl_s": None, "age_s": None,
         "stale": False}
        for name in catalog.on_demand_views
    ]  # fmt: skip
    return views


def stream(settings: Settings, client: Any) -> dict[str, Any]:
    """The Redis stream's lag (entries not yet delivered to the workers), pending entries, length and its counters
    (`processed`, `late`, `dead_letter`) from the stats hash; with Kafka configured only the counters."""
    from pipelines.stream.log import RedisStreamLog
    from pipelines.stream.worker import STATS

    counters = {k.decode() if isinstance(k, bytes) else str(k): int(v) for k, v in client.hgetall(STATS).items()}
    out: dict[str, Any] = {"transport": "kafka" if settings.kafka_bootstrap else "redis", "counters": counters}
    if not settings.kafka_bootstrap:
        out.update(RedisStreamLog(client, partitions=settings.stream_partitions).lag())
    return out


class StreamRate:
    """Events a second processed by the workers: the `processed` counter's growth between two readings."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None
        self._rate: float | None = None
        self._lock = threading.Lock()

    def update(self, processed: int, at: float | None = None) -> float | None:
        moment = time.monotonic() if at is None else at
        with self._lock:
            if self._last is not None and moment - self._last[0] >= 1.0:
                grown = processed - self._last[1]
                self._rate = (grown if grown >= 0 else processed) / (moment - self._last[0])
                self._last = (moment, processed)
            elif self._last is None:
                self._last = (moment, processed)
            return self._rate


def log_window(settings: Settings, days: int) -> tuple[Path, ...]:
    """The score log's files of the last `days` days (what the report reads; a new file means a new report)."""
    return tuple(log_files([settings.score_log_dir], days=days, today=datetime.now(UTC).date()))


def quality_report(
    settings: Settings, registry: ModelRegistry, files: Sequence[Path], days: int, model: str | None
) -> dict[str, Any]:
    """`fraudserve monitor report --json` over `files` (`log_window`) with the labels known now."""
    from pipelines.drift_reference import cache_dir, resolver
    from pipelines.label_log import label_log_dir
    from pipelines.monitoring import registry_report

    # The label stream's copy and the kept drift references, as the CLI's report reads them; the API never rebuilds
    # a reference (that reads the offline store): `fraudserve monitor report` does, once, and keeps it.
    return registry_report(
        registry, settings.offline.labels_file, files, days=days, model=model,
        label_log=label_log_dir(settings.home_dir), references=resolver(cache_dir(settings.home_dir)),
    )  # fmt: skip
