"""Offline store to online store: Feast's own materialization over the whole span of the offline data.

Feast's `materialize_incremental` starts at now - TTL, which would skip historical (backfilled or generated) data;
this asks Feast for exactly the offline store's time span instead, so every entity's latest row lands in Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import duckdb

from pipelines.features.catalog import ENTITIES, TRANSACTION
from pipelines.offline.store import OfflineLayout

if TYPE_CHECKING:
    from feast import FeatureStore


class NothingToMaterialize(ValueError):
    """The offline store is empty: run the backfill first."""


@dataclass(frozen=True)
class MaterializeSummary:
    start: datetime
    end: datetime
    entity_rows: dict[str, int]  # rows written per feature view (one per entity key)
    seconds: float

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


def offline_span(layout: OfflineLayout) -> tuple[datetime, datetime, dict[str, int]]:
    """Earliest and latest event time in the offline store, and the number of distinct keys per view."""
    con = duckdb.connect()
    lows, highs, keys = [], [], {}
    for view, key in _views().items():
        path = layout.file(view if view != TRANSACTION.view else layout.transactions_name)
        if not path.exists():
            raise NothingToMaterialize(f"{path} does not exist: run `fraudserve features backfill` first")
        low, high, count = con.execute(
            f"SELECT min(event_timestamp), max(event_timestamp), count(DISTINCT {key}) FROM read_parquet('{path}')"
        ).fetchone() or (None, None, 0)
        if low is not None:
            lows.append(low)
            highs.append(high)
        keys[view] = int(count)
    con.close()
    if not lows:
        raise NothingToMaterialize(f"the offline store under {layout.root} holds no rows: run the backfill first")
    return min(lows).astimezone(UTC), max(highs).astimezone(UTC), keys


def materialize(store: FeatureStore, layout: OfflineLayout) -> MaterializeSummary:
    """Load every feature view's latest row per entity from the offline store into the online store."""
    start, end, keys = offline_span(layout)
    started = time.perf_counter()
    store.materialize(start_date=start - timedelta(seconds=1), end_date=end + timedelta(seconds=1))
    return MaterializeSummary(start, end, keys, time.perf_counter() - started)
