"""Offline store to online store over the whole span of the offline data: the fast path, or Feast's own.

Feast's `materialize_incremental` starts at now - TTL, which would skip historical (backfilled or generated) data;
this materializes exactly the offline store's time span instead, so every entity's latest row lands in Redis.

Two engines write the same bytes: "fast" (default, `pipelines.fast_materialize`: DuckDB, vectorised encoding and a
write-if-newer Lua script, about 10x Feast's rows/s, on a single Redis node or a Redis Cluster) and "feast"
(`FeatureStore.materialize`, kept to compare with and as the fallback for anything the fast path does not cover, e.g.
a sentinel deployment or a view type it does not encode). Both keep Feast's rule that an older row never replaces a
newer one already in Redis, and both record the interval in Feast's registry. On a cluster whose slots move while the
fast engine writes (resharding), it stops with `SlotMapChanged` instead of falling back: rerun it afterwards.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import duckdb

from pipelines.features.catalog import ENTITIES, TRANSACTION
from pipelines.offline.store import OfflineLayout

if TYPE_CHECKING:
    from feast import FeatureStore

    from pipelines.fast_materialize import Progress


log = logging.getLogger(__name__)

Engine = Literal["fast", "feast"]
ENGINES: tuple[Engine, ...] = ("fast", "feast")


class NothingToMaterialize(ValueError):
    """The offline store is empty: run the backfill first."""


@dataclass(frozen=True)
class MaterializeSummary:
    start: datetime
    end: datetime
    entity_rows: dict[str, int]  # rows materialized per feature view (one per entity key)
    seconds: float
    engine: Engine = "feast"
    # Fast engine: rows per view actually written, i.e. newer than what Redis held (Feast does not report it).
    written: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.entity_rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def _views() -> dict[str, str]:
    """Feature view name -> its join key."""
    views = {e.view: e.join_key for e in ENTITIES}
    views[TRANSACTION.view] = TRANSACTION.join_key
    return views


def offline_span(layout: OfflineLayout, since: datetime | None = None) -> tuple[datetime, datetime, dict[str, int]]:
    """Earliest and latest event time in the offline store (from `since`), and the number of distinct keys per view."""
    where = f"WHERE event_timestamp >= '{since.astimezone(UTC).isoformat()}'::TIMESTAMPTZ" if since else ""
    con = duckdb.connect()
    lows, highs, keys = [], [], {}
    for view, key in _views().items():
        path = layout.file(view if view != TRANSACTION.view else layout.transactions_name)
        if not path.exists():
            raise NothingToMaterialize(f"{path} does not exist: run `fraudserve features backfill` first")
        low, high, count = con.execute(
            f"SELECT min(event_timestamp), max(event_timestamp), count(DISTINCT {key}) "
            f"FROM read_parquet('{path}') {where}"
        ).fetchone() or (None, None, 0)
        if low is not None:
            lows.append(low)
            highs.append(high)
        keys[view] = int(count)
    con.close()
    if not lows:
        raise NothingToMaterialize(f"the offline store under {layout.root} holds no rows: run the backfill first")
    return min(lows).astimezone(UTC), max(highs).astimezone(UTC), keys


def materialize(
    store: FeatureStore,
    layout: OfflineLayout,
    engine: Engine = "fast",
    progress: Progress | None = None,
    since: datetime | None = None,
) -> MaterializeSummary:
    """Load every feature view's latest row per entity from the offline store into the online store.

    `progress(view, rows done, rows of the view)` is called as the fast engine goes (Feast's prints its own bars).
    `since` starts the span later than the offline store's first event (the benchmark's Feast baseline on a subset);
    the per-view row counts are then the keys seen in the shorter span.
    """
    from pipelines.fast_materialize import UnsupportedView, fast_materialize

    if engine not in ENGINES:
        raise ValueError(f"unknown materialize engine {engine!r}: one of {', '.join(ENGINES)}")
    start, end, keys = offline_span(layout, since)
    span_start = since if since is not None else start - timedelta(seconds=1)
    span_end = end + timedelta(seconds=1)
    started = time.perf_counter()
    if engine == "fast":
        try:
            results = fast_materialize(store, span_start, span_end, keys, progress)
        except UnsupportedView as exc:
            log.warning("fast materialize does not cover this store (%s): using Feast's engine", exc)
        else:
            return MaterializeSummary(
                start,
                end,
                {view: r.rows for view, r in results.items()},
                time.perf_counter() - started,
                engine="fast",
                written={view: r.written for view, r in results.items()},
            )
    store.materialize(start_date=span_start, end_date=span_end)
    return MaterializeSummary(start, end, keys, time.perf_counter() - started, engine="feast")
