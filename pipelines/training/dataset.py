"""A point-in-time-correct training set from a Feast feature service.

Entity rows are the offline store's transactions, each at its own event time, so Feast's point-in-time join gives
every row the feature values as of that instant. Labels are the verdicts known at a cut-off: a transaction younger
than the label maturity period at the cut-off is left out (its label may not have arrived yet), an older one
without a fraud verdict counts as genuine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from core.settings import OfflineLayout
from pipelines.features.catalog import load_catalog

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.feature_view import FeatureView

LABEL = "is_fraud"


def entity_columns() -> list[str]:
    """The transaction id and every entity join key of the Feast repo (all event fields), in the event's order."""
    catalog = load_catalog()
    return [catalog.transaction.join_key, *catalog.key_fields]


class TrainingDataError(ValueError):
    """The offline store cannot give a usable training set (empty, no mature rows, no fraud)."""


@dataclass(frozen=True)
class ServiceFeature:
    name: str
    dtype: str  # int64, float64, bool, string


@dataclass(frozen=True)
class LabelPolicy:
    cutoff: datetime | None = None  # default: the latest event or label time in the offline store
    maturity: timedelta = timedelta(days=10)


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # entity columns, event_timestamp, is_fraud, then the service's features in order
    features: list[ServiceFeature]
    feature_service: str
    cutoff: datetime
    maturity: timedelta
    seconds: float

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


_FEAST_TYPES = {"Int64": "int64", "Int32": "int64", "Float64": "float64", "Float32": "float64", "Bool": "bool"}


def service_features(store: FeatureStore, feature_service: str) -> list[ServiceFeature]:
    """The features of a Feast feature service, in the service's order, with their value types."""
    service = store.get_feature_service(feature_service)
    features = []
    for projection in service.feature_view_projections:
        for field in projection.features:
            features.append(ServiceFeature(field.name, _FEAST_TYPES.get(str(field.dtype), "string")))
    return features


def service_join_keys(store: FeatureStore, feature_service: str) -> list[str]:
    """The entity join keys a feature service reads by (its views' and its on-demand views' sources'), in the
    order of the transaction's fields."""
    from feast.infra.offline_stores.offline_utils import get_expected_join_keys

    service = store.get_feature_service(feature_service)
    views: list[FeatureView] = []
    for name in dict.fromkeys(p.name for p in service.feature_view_projections):
        views.extend(_views_behind(store, name))
    keys = get_expected_join_keys(store.project, views, store.registry)
    return [c for c in entity_columns() if c in keys] + sorted(keys - set(entity_columns()))


def _views_behind(store: FeatureStore, name: str) -> list[FeatureView]:
    """The feature view of that name, or the source views of the on-demand view of that name."""
    for get in (store.get_stream_feature_view, store.get_feature_view):
        try:
            return [get(name)]
        except Exception:  # Feast raises its own not-found errors
            continue
    try:
        odfv = store.get_on_demand_feature_view(name)
    except Exception:
        return []
    views: list[FeatureView] = []
    for projection in odfv.source_feature_view_projections.values():
        views.extend(_views_behind(store, projection.name))
    return views


def labeled_entity_rows(layout: OfflineLayout, policy: LabelPolicy) -> tuple[pd.DataFrame, datetime]:
    """Mature transactions with their entity keys, event time and the verdict known at the cut-off."""
    transactions, labels = layout.transactions_file, layout.labels_file
    for path in (transactions, labels):
        if not path.exists():
            raise TrainingDataError(f"{path} does not exist: run `fraudserve features backfill` first")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    cutoff = policy.cutoff
    if cutoff is None:
        row = con.execute(
            f"SELECT greatest((SELECT max(event_timestamp) FROM read_parquet('{transactions}')), "
            f"(SELECT max(label_timestamp) FROM read_parquet('{labels}')))"
        ).fetchone()
        if row is None or row[0] is None:
            raise TrainingDataError(f"the offline store under {layout.root} holds no transactions")
        cutoff = row[0]
    assert cutoff is not None
    cutoff = cutoff.astimezone(UTC)
    mature_before = cutoff - policy.maturity
    keys = ", ".join(f't."{c}"' for c in entity_columns())
    frame = con.execute(
        f"""
        WITH verdicts AS (
            SELECT transaction_id,
                   arg_max(is_fraud, epoch_ms(label_timestamp) * 2 + is_fraud::INT) AS is_fraud
            FROM read_parquet('{labels}') WHERE label_timestamp <= $cutoff
            GROUP BY transaction_id
        )
        SELECT {keys}, t.event_timestamp, coalesce(v.is_fraud, false) AS {LABEL}
        FROM read_parquet('{transactions}') t LEFT JOIN verdicts v USING (transaction_id)
        WHERE t.event_timestamp <= $mature_before
        ORDER BY t.event_timestamp, t.transaction_id
        """,
        {"cutoff": cutoff, "mature_before": mature_before},
    ).df()
    con.close()
    if frame.empty:
        raise TrainingDataError(
            f"no transaction is older than the label maturity period ({policy.maturity.days} days before the "
            f"cut-off {cutoff:%Y-%m-%d %H:%M}): generate or backfill more days, or lower --label-maturity-days"
        )
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame, cutoff


# Feast's point-in-time join (DuckDB offline store, through ibis) joins each entity row with every feature row of
# its key inside the view's TTL before keeping the latest: for a busy merchant and a 30-day TTL that is hundreds of
# rows per entity row. Entity rows go to Feast in time-ordered chunks so the join's intermediate stays bounded.
CHUNK_ROWS = 25_000


def build_training_set(
    store: FeatureStore,
    feature_service: str,
    layout: OfflineLayout,
    policy: LabelPolicy | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> TrainingSet:
    """Entity rows and labels from the offline store, features from Feast's get_historical_features."""
    policy = policy or LabelPolicy()
    started = time.perf_counter()
    features = service_features(store, feature_service)
    rows, cutoff = labeled_entity_rows(layout, policy)
    service = store.get_feature_service(feature_service)
    names = [f.name for f in features]
    columns = entity_columns()
    parts = []
    for start in range(0, len(rows), chunk_rows):
        chunk = rows.iloc[start : start + chunk_rows]
        joined = store.get_historical_features(entity_df=chunk, features=service).to_df()
        parts.append(joined[[*columns, "event_timestamp", LABEL, *names]])
        if progress is not None:
            progress(min(start + chunk_rows, len(rows)), len(rows))
    frame = pd.concat(parts, ignore_index=True)
    frame = frame.sort_values(["event_timestamp", columns[0]], kind="stable").reset_index(drop=True)
    return TrainingSet(frame, features, feature_service, cutoff, policy.maturity, time.perf_counter() - started)
