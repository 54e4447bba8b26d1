"""Offline store to online store over the whole span of the offline data: the fast path, or Feast's own.

Every online view of the Feast repo: the window views (from the files the backfill computed) and the transaction
view over the events' span, and a data engineer's batch views over their own source's span (so a row older than the
first transaction is still written, and served while within the view's TTL).

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import duckdb

from core.settings import OfflineLayout
from pipelines.features.catalog import TRANSACTION_VIEW, Catalog, load_catalog
from pipelines.offline.store import offline_view

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

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
    engines: dict[str, Engine] = field(default_factory=dict)  # which engine wrote each view
    spans: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)  # the interval of each view

    @property
    def rows(self) -> int:
        return sum(self.entity_rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def _spans(
    layout: OfflineLayout, catalog: Catalog, since: datetime | None
) -> tuple[datetime, datetime, dict[str, int], dict[str, tuple[datetime, datetime]]]:
    """The events' span (earliest and latest event time in the offline store, from `since`), the distinct keys per
    view, and each batch view's own span (its source's earliest and latest row)."""
    where = f"WHERE event_timestamp >= '{since.astimezone(UTC).isoformat()}'::TIMESTAMPTZ" if since else ""
    con = duckdb.connect()
    lows, highs, keys = [], [], {}
    files = {v.view: (layout.file(v.view), v.join_key) for v in catalog.window_views}
    files[TRANSACTION_VIEW] = (layout.transactions_file, catalog.transaction.join_key)
    for view, (path, key) in files.items():
        if not path.exists():
            raise NothingToMaterialize(
                f"{path} does not exist: run `fraudserve features backfill` first (after `features apply`, when the "
                f"view {view} is new)"
            )
        low, high, count = con.execute(
            f"SELECT min(event_timestamp), max(event_timestamp), count(DISTINCT {key}) "
            f"FROM read_parquet('{path}') {where}"
        ).fetchone() or (None, None, 0)
        if low is not None:
            lows.append(low)
            highs.append(high)
        keys[view] = int(count)
    if not lows:
        raise NothingToMaterialize(f"the offline store under {layout.root} holds no rows: run the backfill first")
    batch: dict[str, tuple[datetime, datetime]] = {}
    for table in catalog.batch_views:
        if not Path(table.path).exists():
            raise NothingToMaterialize(f"{table.view}: its source {table.path} does not exist")
        ts = '"' + table.timestamp_field.replace('"', '""') + '"'
        low, high, count = con.execute(
            f'SELECT min({ts})::TIMESTAMPTZ, max({ts})::TIMESTAMPTZ, count(DISTINCT "{table.join_key}") '
            f"FROM read_parquet('{table.path}')"
        ).fetchone() or (None, None, 0)
        keys[table.view] = int(count)
        if low is not None:
            second = timedelta(seconds=1)
            batch[table.view] = (low.astimezone(UTC) - second, high.astimezone(UTC) + second)
    con.close()
    return min(lows).astimezone(UTC), max(highs).astimezone(UTC), keys, batch


def offline_span(
    layout: OfflineLayout, since: datetime | None = None, catalog: Catalog | None = None
) -> tuple[datetime, datetime, dict[str, int]]:
    """Earliest and latest event time in the offline store (from `since`), and the number of distinct keys per view."""
    start, end, keys, _ = _spans(layout, catalog or load_catalog(), since)
    return start, end, keys


def feast_materialize(store: FeatureStore, view: FeatureView, start: datetime, end: datetime) -> None:
    """One view through Feast's own engine (`provider.materialize_single_feature_view`, as `store.materialize`),
    reading a window view from the file the backfill computed; then recorded in the registry."""
    from tqdm import tqdm

    def bar(length: int) -> Any:
        return tqdm(total=length, ncols=100)

    store._get_provider().materialize_single_feature_view(
        config=store.config,
        feature_view=offline_view(store, view),
        start_date=start,
        end_date=end,
        registry=store.registry,
        project=store.project,
        tqdm_builder=bar,
    )
    store.registry.apply_materialization(view, store.project, start, end)


def materialize(
    store: FeatureStore,
    layout: OfflineLayout,
    engine: Engine = "fast",
    progress: Progress | None = None,
    since: datetime | None = None,
    catalog: Catalog | None = None,
) -> MaterializeSummary:
    """Load every online view's latest row per entity into the online store: window views and the transaction view
    over the offline store's span, a data engineer's batch views over their own source's span.

    `progress(view, rows done, rows of the view)` is called as the fast engine goes (Feast's prints its own bars).
    `since` starts the events' span later than the offline store's first event (the benchmark's Feast baseline on a
    subset); the per-view row counts are then the keys seen in the shorter span. Engine "fast" writes every view it
    encodes and leaves the others to Feast's engine (`MaterializeSummary.engines` says which did which).
    """
    from feast import FeatureView

    from pipelines.fast_materialize import UnsupportedView, fast_materialize, online_target, plan_view

    if engine not in ENGINES:
        raise ValueError(f"unknown materialize engine {engine!r}: one of {', '.join(ENGINES)}")
    catalog = catalog or load_catalog()
    start, end, keys, batch_spans = _spans(layout, catalog, since)
    span_start = since if since is not None else start - timedelta(seconds=1)
    span_end = end + timedelta(seconds=1)
    spans = {view: batch_spans.get(view, (span_start, span_end)) for view in keys}
    started = time.perf_counter()
    views = [v for v in store._get_feature_views_to_materialize(None) if isinstance(v, FeatureView)]
    plans, by_feast = [], []
    if engine == "fast":
        try:
            online_target(store).close()
        except UnsupportedView as exc:
            log.warning("fast materialize does not cover this store (%s): using Feast's engine", exc)
            by_feast = views
        else:
            for view in views:
                try:
                    plans.append(plan_view(store, view))
                except UnsupportedView as exc:
                    log.warning("fast materialize does not encode %s: Feast's engine writes it", exc)
                    by_feast.append(view)
    else:
        by_feast = views
    results = fast_materialize(store, span_start, span_end, keys, progress, plans, spans) if plans else {}
    for view in by_feast:
        low, high = spans.get(view.name, (span_start, span_end))
        feast_materialize(store, view, low, high)
    return MaterializeSummary(
        start,
        end,
        {view.name: results[view.name].rows if view.name in results else keys.get(view.name, 0) for view in views},
        time.perf_counter() - started,
        engine="fast" if plans else "feast",
        written={name: r.written for name, r in results.items()},
        engines={view.name: "fast" if view.name in results else "feast" for view in views},
        spans={view.name: spans.get(view.name, (span_start, span_end)) for view in views},
    )
