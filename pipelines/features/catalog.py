"""The feature catalog, read from the Feast repo: what every pipeline computes, stores and serves.

The Feast repo (`feature_repo/`) is the one place where features are declared, in Feast's own classes: the
built-in ones in `definitions.py`, a data engineer's in any other `.py` file beside it. This module reads those
objects and derives what the engines need:

- window views: each `StreamFeatureView` over the transaction events with `aggregations`, its entity (whose join key
  is an event field), TTL and one `WindowFeature` per `Aggregation` (function, column, window, name, value type);
- the transaction view's fields (`transaction_features`): the event's own fields, extra typed fields included;
- batch views: plain `FeatureView`s over the engineer's own Parquet tables, materialized from their source;
- the on-demand views and feature services, left to Feast.

`check_catalog` refuses what cannot work, naming the view and the problem; `fraudserve features apply` runs it
before `feast apply`. Windows follow SPEC: for an entity's event at time t a window feature covers that entity's
events with timestamp in (t - W, t], peers at t included. Timestamps are integer epoch milliseconds, so (t - W, t]
is [t - W + 1 ms, t].
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feast import Entity, FeatureService, FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView
    from feast.stream_feature_view import StreamFeatureView


class Agg(StrEnum):
    """How a window feature folds the events in its window (Feast's `Aggregation.function`)."""

    COUNT = "count"  # number of events (with a non-null `column`, when one is named)
    SUM = "sum"  # sum of `column`
    MEAN = "mean"  # sum / count of `column`
    MIN = "min"  # minimum of `column`
    MAX = "max"  # maximum of `column`
    DISTINCT = "count_distinct"  # number of distinct non-null values of `column`
    SECONDS_SINCE_PREV = "seconds_since_prev"  # t minus the latest timestamp strictly before t, in seconds
    FRAUD_RATE = "fraud_rate"  # events whose label in force at t says fraud, over all events in the window


# Functions whose value is an integer; every other one is a float.
INTEGER_AGGS = (Agg.COUNT, Agg.DISTINCT)
# Functions that need no column (a column may still be named: `count` then counts its non-null values).
COLUMNLESS_AGGS = (Agg.COUNT, Agg.SECONDS_SINCE_PREV, Agg.FRAUD_RATE)
# Functions without a window.
WINDOWLESS_AGGS = (Agg.SECONDS_SINCE_PREV,)
# Columns that name the event itself rather than a field: accepted where no column is needed.
NO_COLUMN = ("", "transaction_id", "event_timestamp", "is_fraud")

TRANSACTION_VIEW = "transaction_features"
TRANSACTIONS_SOURCE = "transactions_source"


@dataclass(frozen=True)
class EntitySpec:
    """A Feast entity keyed by one field of the transaction event."""

    name: str
    join_key: str
    description: str = ""


@dataclass(frozen=True)
class WindowFeature:
    """One window feature (one Feast `Aggregation`) of one window view."""

    name: str
    view: str
    agg: Agg
    window: timedelta | None = None
    column: str | None = None

    @property
    def dtype(self) -> str:
        """Arrow/Feast value type: counts are integers, everything else is a float."""
        return "int64" if self.agg in INTEGER_AGGS else "float64"

    @property
    def window_ms(self) -> int:
        if self.window is None:
            raise ValueError(f"feature {self.name} has no window")
        return int(self.window.total_seconds() * 1000)


@dataclass(frozen=True)
class WindowView:
    """A `StreamFeatureView` over the transaction events: its entity and its window features, in declared order."""

    view: str
    entity: EntitySpec
    ttl: timedelta
    features: tuple[WindowFeature, ...]

    @property
    def join_key(self) -> str:
        return self.entity.join_key

    @property
    def max_window(self) -> timedelta:
        return max((f.window for f in self.features if f.window is not None), default=timedelta(0))

    @property
    def needs_labels(self) -> bool:
        return any(f.agg is Agg.FRAUD_RATE for f in self.features)

    @property
    def columns(self) -> tuple[str, ...]:
        """Event fields the features read (besides the key and the time)."""
        return tuple(dict.fromkeys(f.column for f in self.features if f.column))


@dataclass(frozen=True)
class BatchView:
    """A plain `FeatureView` over the engineer's own Parquet table, keyed by an event field."""

    view: str
    join_key: str
    ttl: timedelta | None
    path: str
    timestamp_field: str
    features: tuple[tuple[str, str], ...]  # (name, Feast type name)


class CatalogError(ValueError):
    """Definitions in the Feast repo that cannot work, one line per problem, each naming its view."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "the Feast repo declares features that fraudserve cannot compute or serve:\n"
            + "\n".join(f"  - {p}" for p in self.problems)
        )


@dataclass(frozen=True)
class KafkaEventSource:
    """The transaction events' Feast `KafkaSource` (JSON messages): where the stream workers read them.

    Only the servers and the topic come from the repo; credentials come from FRAUDSERVE_KAFKA_* settings."""

    name: str
    bootstrap_servers: str
    topic: str
    timestamp_field: str


@dataclass(frozen=True)
class Catalog:
    """Everything declared in the Feast repo, in the shapes the engines use."""

    transaction: EntitySpec
    transaction_fields: dict[str, str]  # the transaction view's fields (name -> "string" | "int64" | "float64")
    entities: tuple[EntitySpec, ...]  # entities keyed by an event field (the transaction's own excluded)
    window_views: tuple[WindowView, ...]
    batch_views: tuple[BatchView, ...] = ()
    on_demand_views: tuple[str, ...] = ()
    feature_services: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False)
    kafka_source: KafkaEventSource | None = None  # the transaction events' source when it is a KafkaSource

    @property
    def window_features(self) -> tuple[WindowFeature, ...]:
        return tuple(f for v in self.window_views for f in v.features)

    def window_view(self, name: str) -> WindowView:
        for view in self.window_views:
            if view.view == name:
                return view
        raise KeyError(f"no window view named {name!r} in the Feast repo")

    def views_of(self, entity: EntitySpec) -> tuple[WindowView, ...]:
        """The window views keyed by one entity."""
        return tuple(v for v in self.window_views if v.entity.name == entity.name)

    @property
    def window_entities(self) -> tuple[EntitySpec, ...]:
        """Entities with at least one window view, in declaration order: the stream keeps a history for each."""
        seen = {v.entity.name: v.entity for v in self.window_views}
        return tuple(seen.values())

    def max_window(self, entity: EntitySpec) -> timedelta:
        """The longest window over an entity's views: how much history its state must keep."""
        return max((v.max_window for v in self.views_of(entity)), default=timedelta(0))

    @property
    def key_fields(self) -> tuple[str, ...]:
        """The event fields that key an entity's views, in the transaction view's field order."""
        keys = {e.join_key for e in self.entities}
        return tuple(f for f in self.transaction_fields if f in keys)

    @property
    def event_fields(self) -> tuple[str, ...]:
        """Fields a transaction event carries: the transaction id and the transaction view's fields."""
        return (self.transaction.join_key, *self.transaction_fields)

    @property
    def extra_fields(self) -> dict[str, str]:
        """Declared fields beyond SPEC's event (e.g. `customer_id`): carried offline, in the stream and online."""
        return {k: v for k, v in self.transaction_fields.items() if k not in BUILTIN_TRANSACTION_FIELDS}

    def raise_problems(self) -> None:
        if self.problems:
            raise CatalogError(self.problems)


# SPEC's event, as the transaction view carries it (`event_time_ms`: the event time as epoch milliseconds).
BUILTIN_TRANSACTION_FIELDS: dict[str, str] = {
    "card_id": "string",
    "merchant_id": "string",
    "device_id": "string",
    "ip_address": "string",
    "amount": "float64",
    "currency": "string",
    "merchant_category": "string",
    "country": "string",
    "event_time_ms": "int64",
}

_FEAST_TYPES = {"String": "string", "Int64": "int64", "Int32": "int64", "Float64": "float64", "Float32": "float64"}


def _batch_path(view: FeatureView) -> str | None:
    source = view.batch_source
    path = getattr(source, "path", None)
    return str(path) if path is not None else None


def from_objects(
    entities: Iterable[Entity],
    feature_views: Iterable[FeatureView],
    stream_feature_views: Iterable[StreamFeatureView],
    on_demand_views: Iterable[OnDemandFeatureView] = (),
    feature_services: Iterable[FeatureService] = (),
) -> Catalog:
    """The catalog of a set of Feast objects (parsed from the repo or listed from the registry).

    Problems do not raise here: they are kept in `Catalog.problems` (see `check_catalog`)."""
    problems: list[str] = []
    by_name = {e.name: e for e in entities}
    views = list(feature_views)
    transaction_view = next((v for v in views if v.name == TRANSACTION_VIEW), None)
    if transaction_view is None:
        raise CatalogError([f"no feature view named {TRANSACTION_VIEW}: keep feature_repo/definitions.py"])
    transaction_entity = by_name.get(transaction_view.entities[0]) if transaction_view.entities else None
    if transaction_entity is None:
        raise CatalogError([f"{TRANSACTION_VIEW} has no entity"])
    transaction = EntitySpec(transaction_entity.name, transaction_entity.join_key, transaction_entity.description or "")
    fields: dict[str, str] = {}
    for f in transaction_view.features:
        if f.name == transaction.join_key:
            continue
        kind = _FEAST_TYPES.get(str(f.dtype))
        if kind is None:
            problems.append(
                f"{TRANSACTION_VIEW}.{f.name}: type {f.dtype} is not an event field type (String, Int64, Float64)"
            )
            continue
        fields[f.name] = kind
    for name, kind in BUILTIN_TRANSACTION_FIELDS.items():
        if fields.get(name) != kind:
            problems.append(f"{TRANSACTION_VIEW}.{name}: SPEC's event field must stay declared as {kind}")
    event_fields = {transaction.join_key: "string", **fields}

    def keyed_entity(view_name: str, entity_names: Sequence[str]) -> EntitySpec | None:
        if len(entity_names) != 1:
            problems.append(f"{view_name}: needs exactly one entity, got {len(entity_names)}")
            return None
        entity = by_name.get(entity_names[0])
        if entity is None:
            problems.append(f"{view_name}: unknown entity {entity_names[0]!r}")
            return None
        if entity.join_key not in event_fields:
            problems.append(
                f"{view_name}: entity {entity.name}'s join key {entity.join_key!r} is not an event field; "
                f"declare it as a typed field of {TRANSACTION_VIEW} (events then carry it)"
            )
            return None
        kind = event_fields[entity.join_key]
        if kind != "string":
            problems.append(
                f"{view_name}: entity {entity.name}'s join key {entity.join_key!r} is a {kind} field; entity keys "
                f"are strings (declare it as String on {TRANSACTION_VIEW})"
            )
            return None
        return EntitySpec(entity.name, entity.join_key, entity.description or "")

    window_views: list[WindowView] = []
    for sfv in stream_feature_views:
        entity = keyed_entity(sfv.name, list(sfv.entities))
        source_name = getattr(sfv.stream_source, "name", None) if sfv.stream_source is not None else None
        push_name = getattr(transaction_view.stream_source, "name", None)
        if source_name is None or source_name != push_name:
            problems.append(
                f"{sfv.name}: its source must be {TRANSACTIONS_SOURCE} (the transaction events), got {source_name!r}"
            )
        if not sfv.aggregations:
            problems.append(f"{sfv.name}: a StreamFeatureView over the events needs `aggregations`")
        if getattr(sfv, "enable_tiling", False):
            # Refused rather than ignored: tiles would change the values (tile-granular windows), and fraudserve
            # computes every window to the millisecond, offline and in the stream alike.
            problems.append(
                f"{sfv.name}: enable_tiling is not supported: fraudserve computes every window exactly, offline "
                "and in the stream (cost per event flat in the window's size, about 120 bytes per kept event); "
                "remove enable_tiling and tiling_hop_size"
            )
        schema = {f.name: str(f.dtype) for f in sfv.schema}
        features: list[WindowFeature] = []
        for agg in sfv.aggregations:
            name = agg.name or ""
            where = f"{sfv.name}.{name or '?'}"
            if not name:
                problems.append(f"{where}: every Aggregation needs a `name` (the feature's name)")
                continue
            try:
                function = Agg(agg.function)
            except ValueError:
                problems.append(f"{where}: unknown function {agg.function!r}; one of {', '.join(a.value for a in Agg)}")
                continue
            column = agg.column or ""
            if function in COLUMNLESS_AGGS and column in NO_COLUMN:
                column = ""
            elif column in NO_COLUMN or column not in event_fields:
                problems.append(
                    f"{where}: column {column!r} is not an event field ({', '.join(event_fields)})"
                    if column
                    else f"{where}: {function.value} needs a column"
                )
                continue
            elif function in (Agg.SUM, Agg.MEAN, Agg.MIN, Agg.MAX) and event_fields[column] == "string":
                problems.append(f"{where}: {function.value} of {column!r} needs a number, and it is a string")
                continue
            window = agg.time_window
            if function not in WINDOWLESS_AGGS and (window is None or window <= timedelta(0)):
                problems.append(f"{where}: {function.value} needs a positive time_window")
                continue
            if window is not None and window.total_seconds() * 1000 % 1:
                problems.append(f"{where}: time_window must be whole milliseconds")
                continue
            feature = WindowFeature(
                name, sfv.name, function, None if function in WINDOWLESS_AGGS else window, column or None
            )
            expected = "Int64" if feature.dtype == "int64" else "Float64"
            if name not in schema:
                problems.append(f"{where}: no schema Field named {name!r} (add Field(name={name!r}, dtype={expected}))")
                continue
            if schema[name] != expected:
                problems.append(f"{where}: schema Field {name!r} is {schema[name]}, {function.value} gives {expected}")
                continue
            features.append(feature)
        rates = [f for f in features if f.agg is Agg.FRAUD_RATE]
        if len(rates) > 1:
            problems.append(f"{sfv.name}: at most one fraud_rate feature per view")
        names = {a.name for a in sfv.aggregations}
        for extra in schema.keys() - names - ({entity.join_key} if entity else set()):
            problems.append(f"{sfv.name}.{extra}: a schema Field with no Aggregation of that name")
        if entity is not None and features:
            window_views.append(WindowView(sfv.name, entity, sfv.ttl or timedelta(0), tuple(features)))

    batch_views: list[BatchView] = []
    keyed = {v.entity.name: v.entity for v in window_views}
    for plain in views:
        if plain.name == TRANSACTION_VIEW:
            continue
        if plain.stream_source is not None and getattr(plain.stream_source, "name", None) == getattr(
            transaction_view.stream_source, "name", None
        ):
            problems.append(
                f"{plain.name}: a FeatureView over {TRANSACTIONS_SOURCE} computes nothing; declare window features "
                "as a StreamFeatureView with aggregations"
            )
            continue
        key_entity = keyed_entity(plain.name, list(plain.entities))
        if key_entity is None:
            continue
        keyed.setdefault(key_entity.name, key_entity)
        path = _batch_path(plain)
        if path is None or plain.batch_source is None:
            problems.append(f"{plain.name}: its source has no file path; batch views read a Parquet FileSource")
            continue
        batch_views.append(
            BatchView(
                plain.name,
                key_entity.join_key,
                plain.ttl,
                path,
                plain.batch_source.timestamp_field,
                tuple((f.name, str(f.dtype)) for f in plain.features),
            )
        )

    view_names = [v.view for v in window_views] + [v.view for v in batch_views]
    for duplicate in sorted({n for n in view_names if view_names.count(n) > 1}):
        problems.append(f"{duplicate}: two views of one name")
    return Catalog(
        transaction=transaction,
        transaction_fields=fields,
        entities=tuple(keyed.values()),
        window_views=tuple(window_views),
        batch_views=tuple(batch_views),
        on_demand_views=tuple(v.name for v in on_demand_views),
        feature_services=tuple(s.name for s in feature_services),
        problems=tuple(problems),
        kafka_source=_kafka_source(transaction_view, problems),
    )


def _kafka_source(transaction_view: FeatureView, problems: list[str]) -> KafkaEventSource | None:
    """The transaction view's stream source when it is Feast's `KafkaSource` (with `JsonFormat`), else None."""
    from feast.data_format import JsonFormat
    from feast.data_source import KafkaSource

    source = transaction_view.stream_source
    if not isinstance(source, KafkaSource):
        return None
    options = source.kafka_options
    where = f"{TRANSACTION_VIEW}'s source {source.name}"
    if not isinstance(options.message_format, JsonFormat):
        problems.append(f"{where}: message_format must be JsonFormat (events are JSON), got {options.message_format}")
    if not options.kafka_bootstrap_servers or not options.topic:
        problems.append(f"{where}: set kafka_bootstrap_servers and topic")
        return None
    return KafkaEventSource(source.name, options.kafka_bootstrap_servers, options.topic, source.timestamp_field)


def parse_repo(repo: Path) -> Catalog:
    """The catalog of a Feast repo's `.py` files, as `feast apply` sees them (problems kept, not raised)."""
    from feast.repo_operations import parse_repo as feast_parse_repo

    repo = repo.resolve()
    with _PARSING:
        # Feast imports each file as a module named by its path from the working directory (`definitions`, ...),
        # and the files read FRAUDSERVE_HOME when imported: forget every module of a Feast repo imported before,
        # so that this parse sees this repo's files under this run's settings.
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if path and (Path(path).parent / "feature_store.yaml").exists():
                del sys.modules[name]
        importlib.invalidate_caches()
        cwd = os.getcwd()
        sys.path.insert(0, str(repo))
        os.chdir(repo)
        try:
            contents = feast_parse_repo(repo)
        finally:
            os.chdir(cwd)
            sys.path.remove(str(repo))
    return from_objects(
        contents.entities,
        contents.feature_views,
        contents.stream_feature_views,
        contents.on_demand_feature_views,
        contents.feature_services,
    )


_PARSING = threading.Lock()


def default_repo() -> Path:
    """The Feast repo of this run: FRAUDSERVE_FEATURE_REPO, or the project's feature_repo/."""
    configured = os.environ.get("FRAUDSERVE_FEATURE_REPO")
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parents[2] / "feature_repo"


@lru_cache(maxsize=4)
def _load(repo: Path, home: str | None) -> Catalog:
    return parse_repo(repo)


def load_catalog(repo: Path | None = None) -> Catalog:
    """The catalog of the Feast repo (default: this run's), read once per repo and FRAUDSERVE_HOME.

    Raises CatalogError when a definition cannot work."""
    catalog = _load((repo or default_repo()).resolve(), os.environ.get("FRAUDSERVE_HOME"))
    catalog.raise_problems()
    return catalog
