"""A Feast offline store whose point-in-time join is DuckDB's ASOF JOIN.

Feast's DuckDB offline store (through ibis) joins every entity row with every feature row of its key inside the
view's TTL and then keeps the latest: for a busy merchant and a 30-day TTL that is hundreds to thousands of rows
per entity row, and a training set of a million transactions spilled more than 70 GB here without finishing. An
ASOF JOIN finds the latest row at or before each entity timestamp by a sorted merge instead.

It is a Feast plugin (`offline_store: type: pipelines.offline.feast_asof.AsofDuckDBOfflineStore` in
feature_store.yaml): `get_historical_features` keeps Feast's contract (the same columns, TTL, on-demand views run by
Feast's own RetrievalJob), and every other operation (materialize's pull_latest, ...) is Feast's DuckDB store's.
Feature views whose batch source is not a Parquet FileSource fall back to Feast's implementation. A window view
(a `StreamFeatureView` with aggregations, which Feast's own stores cannot compute) is read from the file the backfill
computed for it (`pipelines.offline.store.computed_file`).
"""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any, Literal

import duckdb
import pandas as pd
import pyarrow as pa
from feast.errors import FeastEntityDFMissingColumnsError
from feast.feature_view import FeatureView
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import get_expected_join_keys
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import RepoConfig
from feast.saved_dataset import SavedDatasetStorage

from pipelines.offline.store import computed_file

ENTITY_TIMESTAMP = "event_timestamp"


class AsofDuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    type: Literal["pipelines.offline.feast_asof.AsofDuckDBOfflineStore"] = (
        "pipelines.offline.feast_asof.AsofDuckDBOfflineStore"
    )


class AsofRetrievalJob(RetrievalJob):
    """The joined table; Feast's RetrievalJob applies the on-demand feature views on to_df/to_arrow."""

    def __init__(
        self,
        table: pa.Table,
        on_demand_feature_views: list[OnDemandFeatureView],
        full_feature_names: bool,
        metadata: RetrievalMetadata,
        hidden: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self._table = table
        self._odfvs = on_demand_feature_views
        self._full_feature_names = full_feature_names
        self._metadata = metadata
        self._hidden = hidden  # on-demand views' inputs the caller did not ask for: dropped once they have run

    def to_arrow(self, validation_reference: Any = None, timeout: int | None = None) -> pa.Table:
        table: pa.Table = super().to_arrow(validation_reference=validation_reference, timeout=timeout)
        hidden = [c for c in self._hidden if c in table.column_names]
        return table.drop_columns(hidden) if hidden else table

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        frame: pd.DataFrame = self._table.to_pandas()
        return frame

    def _to_arrow_internal(self, timeout: int | None = None) -> pa.Table:
        return self._table

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return self._odfvs

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def persist(self, storage: SavedDatasetStorage, allow_overwrite: bool = False, timeout: int | None = None) -> None:
        raise NotImplementedError("saved datasets are not supported by the ASOF offline store; use to_df()")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _view_select(view: FeatureView, feature_refs: list[str], full_feature_names: bool) -> tuple[list[str], list[str]]:
    """(source columns, output names) of the features requested from one view."""
    prefix = view.projection.name_to_use()  # type: ignore[no-untyped-call]
    base = view.projection.name_alias or view.name
    features = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
    names = [f"{base}__{f}" if full_feature_names else f for f in features]
    return features, names


def asof_join(
    entity_df: pd.DataFrame, views: list[FeatureView], feature_refs: list[str], full_feature_names: bool
) -> pa.Table:
    """Each entity row with each view's latest row at or before its timestamp, null when older than the TTL."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    entity = entity_df.copy()
    entity[ENTITY_TIMESTAMP] = pd.to_datetime(entity[ENTITY_TIMESTAMP], utc=True)
    entity["__row"] = range(len(entity))
    con.register("entity", entity)
    selected = [f"e.{_quote(c)}" for c in entity_df.columns]
    joins = []
    for i, view in enumerate(views):
        source = view.batch_source
        assert isinstance(source, FileSource)
        features, names = _view_select(view, feature_refs, full_feature_names)
        keys = view.projection.join_key_map or {c.name: c.name for c in view.entity_columns}
        # A window view's rows are the file the backfill computed, not its source's events.
        computed = computed_file(view)
        path, ts = (computed, "event_timestamp") if computed is not None else (source.path, source.timestamp_field)
        alias = f"v{i}"
        columns = ", ".join([*(_quote(k) for k in keys), f"{_quote(ts)}::TIMESTAMPTZ AS __ts",
                             *(_quote(f) for f in features)])  # fmt: skip
        on = " AND ".join(
            [*(f"e.{_quote(entity_key)} = {alias}.{_quote(view_key)}" for view_key, entity_key in keys.items()),
             f"e.{ENTITY_TIMESTAMP} >= {alias}.__ts"]
        )  # fmt: skip
        joins.append(f"ASOF LEFT JOIN (SELECT {columns} FROM read_parquet('{path}')) {alias} ON {on}")
        ttl = view.ttl if view.ttl and view.ttl > timedelta(0) else None
        for feature, name in zip(features, names, strict=True):
            value = f"{alias}.{_quote(feature)}"
            if ttl is not None:
                seconds = int(ttl.total_seconds())
                value = f"CASE WHEN {alias}.__ts >= e.{ENTITY_TIMESTAMP} - INTERVAL {seconds} SECOND THEN {value} END"
            selected.append(f"{value} AS {_quote(name)}")
    query = f"SELECT {', '.join(selected)} FROM entity e {' '.join(joins)} ORDER BY e.__row"
    table = con.sql(query).to_arrow_table()
    con.close()
    return table


def check_join_keys(
    entity_df: pd.DataFrame, feature_views: list[FeatureView], registry: BaseRegistry, project: str
) -> None:
    """Feast's own error for an entity frame without a join key its views need (as Feast's other stores raise it),
    rather than the SQL engine's binder error further down."""
    expected = get_expected_join_keys(project, feature_views, registry)
    missing = expected - set(entity_df.columns)
    if missing:
        raise FeastEntityDFMissingColumnsError(sorted(expected | {ENTITY_TIMESTAMP}), sorted(missing))  # type: ignore[no-untyped-call]


def requested_refs(feature_refs: list[str]) -> list[str]:
    """The feature references the caller of `FeatureStore.get_historical_features` asked for.

    Feast appends to the references it passes the offline store those of on-demand views' inputs (in its own
    `_feature_refs_for_provider`), and keeps every column of them in the result. The frame it came from still holds
    the requested ones (`_feature_refs`); without that frame (a direct call) every reference counts as requested."""
    frame = sys._getframe(1)
    for _ in range(8):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            break
        if frame.f_code.co_name == "get_historical_features" and "_feature_refs_for_provider" in frame.f_locals:
            asked = frame.f_locals.get("_feature_refs")
            if isinstance(asked, list) and set(asked) <= set(feature_refs):
                return [str(r) for r in asked]
            break
    return list(feature_refs)


def _output_name(ref: str, full_feature_names: bool) -> str:
    view, feature = ref.split(":", 1)
    return f"{view}__{feature}" if full_feature_names else feature


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    @staticmethod
    def get_historical_features(  # type: ignore[override]
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        if isinstance(entity_df, pd.DataFrame):
            check_join_keys(entity_df, feature_views, registry, project)
        parquet = all(
            isinstance(v.batch_source, FileSource) and str(v.batch_source.path).endswith(".parquet")
            for v in feature_views
        )
        if not parquet or not isinstance(entity_df, pd.DataFrame) or ENTITY_TIMESTAMP not in entity_df:
            return DuckDBOfflineStore.get_historical_features(
                config, feature_views, feature_refs, entity_df, registry, project, full_feature_names,
                filter_by_created_timestamp,
            )  # fmt: skip
        asked = requested_refs(feature_refs)
        kept = {_output_name(r, full_feature_names) for r in asked} | set(entity_df.columns)
        hidden = tuple(
            name for r in feature_refs if r not in asked and (name := _output_name(r, full_feature_names)) not in kept
        )
        table = asof_join(entity_df, feature_views, feature_refs, full_feature_names)
        stamps: Any = pd.to_datetime(entity_df[ENTITY_TIMESTAMP], utc=True)
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in entity_df.columns if c != ENTITY_TIMESTAMP],
            min_event_timestamp=stamps.min() if len(stamps) else None,
            max_event_timestamp=stamps.max() if len(stamps) else None,
        )
        odfvs = OnDemandFeatureView.get_requested_odfvs(feature_refs, project, registry)
        return AsofRetrievalJob(table, odfvs, full_feature_names, metadata, hidden)
