"""A feature plan: where each of a model's features comes from, resolved once per feature service.

A model reads any subset of its feature service's features, in manifest order (`for_model`). Each comes from one
of four places:

- a view in the online store keyed by a field of the transaction (a window view, i.e. a `StreamFeatureView` over
  the events, or a batch view, i.e. a plain `FeatureView` over an engineer's own table), read by that field's value;
- the transaction's own fields (the transaction view, or the request for an inline transaction);
- the built-in request-time view `transaction_request_features` (`pipelines.features.request_time`, vectorised);
- any other on-demand view, computed with Feast's own transformation from the registry's object.

Views are read from the registry the store was opened on (what `feast apply` wrote, hence what materialize and
the stream wrote to Redis), through the same catalog code as the pipelines (`pipelines.features.catalog`). A
service that cannot be served raises `UnknownFeatureService` with every problem, each naming its view: the model
registry resolves the plan at registration with this code, so that a model the API could not serve is refused
there, never a 500 at serving time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pipelines.features.catalog import (
    BUILTIN_TRANSACTION_FIELDS,
    TRANSACTION_VIEW,
    Catalog,
    CatalogError,
    EntitySpec,
    from_objects,
)
from pipelines.features.request_time import REQUEST_TIME_FEATURES

if TYPE_CHECKING:
    from feast import FeatureStore
    from feast.on_demand_feature_view import OnDemandFeatureView

BUILTIN_REQUEST_VIEW = "transaction_request_features"
# The built-in request-time view's inputs: (view, feature).
BUILTIN_REQUEST_INPUTS = (("card_features", "card_amount_mean_7d"), (TRANSACTION_VIEW, "amount"),
                          (TRANSACTION_VIEW, "event_time_ms"))  # fmt: skip
WINDOW = "window"
BATCH = "batch"


class UnknownFeatureService(LookupError):
    """A feature service that Feast does not know, or that the API cannot serve (`problems` say why)."""

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        text = message if not problems else message + "\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text)
        self.problems = list(problems)


@dataclass(frozen=True)
class ViewRead:
    """Features to read from one view of the online store, keyed by a field of the transaction."""

    view: str
    entity: EntitySpec
    kind: str  # WINDOW or BATCH
    ttl: timedelta | None  # the view's own TTL (None: none, as Feast's 0)
    features: tuple[str, ...]  # read: the served ones and those on-demand views take as input
    served: tuple[str, ...] = ()  # the features of the service's projection, in its order

    @property
    def join_key(self) -> str:
        return self.entity.join_key

    @property
    def refs(self) -> list[str]:
        return [f"{self.view}:{f}" for f in self.features]

    @property
    def subject(self) -> str:
        """How an uncertain reason names the view's values: by entity for window views, as before."""
        return self.entity.name if self.kind == WINDOW else self.view


@dataclass(frozen=True)
class OnDemandRead:
    """A generic on-demand view: computed with Feast's transformation from its inputs."""

    name: str
    odfv: OnDemandFeatureView = field(compare=False, repr=False)
    features: tuple[str, ...]  # served outputs, in the projection's order
    inputs: tuple[tuple[str, str], ...]  # (view, feature) of its source projections
    request_fields: tuple[str, ...]  # request data fields: fields of the transaction
    join_keys: tuple[str, ...]  # entity columns Feast's response carries: the transaction id and the views' keys
    types: tuple[Any, ...] = field(compare=False, repr=False, default=())  # Feast ValueType of each output

    def python_values(self, inputs: dict[str, list[Any]]) -> dict[str, list[Any]] | None:
        """The served outputs of a python-mode view for `inputs` (Feast's response columns for the view, one list
        per column), as Feast's online read gives them; None for any other mode (Feast's own code computes those).

        What `transform_dict` does in python mode without its per-call cost (Feast's `OnDemandFeatureView` is
        `@typechecked`: typeguard walks every argument and the returned dict on each call, about as much CPU as the
        rest of a single score): each source feature under both its short and its `view__feature` name, the user's
        function called on the dict, its outputs taking precedence over the inputs. Each output column is then
        converted as Feast converts it (`python_values_to_proto_values` and back) by `as_feast_returns`: a float64,
        int64 or string column of plain values directly, anything else by Feast's functions."""
        odfv = self.odfv
        if odfv.mode != "python" or odfv.singleton or odfv.feature_transformation is None:
            return None
        given = dict(inputs)
        added: list[str] = []
        for full, short in _aliases(odfv):
            if full in inputs:
                given[short] = inputs[full]
                added.append(short)
            elif short in inputs:
                given[full] = inputs[short]
                added.append(full)
        outputs = odfv.feature_transformation.udf(given)  # PythonTransformation.transform without the copy
        merged = {**given, **outputs}
        for name in added:
            merged.pop(name, None)
        return {
            name: as_feast_returns(merged[name], kind) for name, kind in zip(self.features, self.types, strict=True)
        }


_PLAIN: dict[str, type] = {"DOUBLE": float, "INT64": int, "STRING": str}  # ValueType name -> Python type


def _aliases(odfv: OnDemandFeatureView) -> list[tuple[str, str]]:
    """(`view__feature`, `feature`) of each feature of the view's source projections (`_preprocess_feature_dict`)."""
    return [(f"{p.name}__{f.name}", f.name) for p in odfv.source_feature_view_projections.values() for f in p.features]


def as_feast_returns(values: Any, kind: Any) -> list[Any]:
    """An on-demand output column as Feast's online read returns it: each value to a ValueProto of the schema's type
    and back. A float64 column of floats and None (NaN becomes None, as in Feast), an int64 column of ints and None,
    a string column of strings and None are that without a message per value; any other column, or a value of
    another type in one, goes through Feast's own functions."""
    from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

    values = values if isinstance(values, list) or hasattr(values, "dtype") else [values]
    if isinstance(values, list):
        plain = _PLAIN.get(getattr(kind, "name", ""))
        if plain is not None and all([type(v) is plain or v is None for v in values]):
            if plain is float:
                return [None if v is None or math.isnan(v) else v for v in values]  # NaN: None, as Feast gives
            if plain is not int or all([v is None or -(1 << 63) <= v < 1 << 63 for v in values]):
                return list(values)
    protos = python_values_to_proto_values(values, kind)
    return [feast_value_type_to_python_type(p) for p in protos]


@dataclass(frozen=True)
class FeaturePlan:
    feature_service: str
    features: tuple[str, ...]  # in the service's (and the model's) order
    views: tuple[ViewRead, ...]  # online-store views to read
    transaction_fields: tuple[str, ...]  # features taken from the transaction itself
    request_time: tuple[str, ...]  # features of the built-in request-time view
    on_demand: tuple[OnDemandRead, ...] = ()  # other on-demand views
    record_fields: tuple[str, ...] = ()  # every field a transaction record carries (the transaction view's)
    extra_fields: tuple[tuple[str, str], ...] = ()  # declared event fields beyond SPEC's: (name, "string"|...)

    @property
    def entity_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.join_key for v in self.views))

    def view(self, name: str) -> ViewRead | None:
        return next((v for v in self.views if v.view == name), None)

    # What `build_rows` walks for every record, made once per plan (a plan lives as long as its model version):
    # the properties and `timedelta.total_seconds` calls per view and record were a tenth of a single score's rows.
    @functools.cached_property
    def served_by_view(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Each view's name and its served features, in the plan's order."""
        return tuple((v.view, v.served) for v in self.views)

    @functools.cached_property
    def freshness_checks(self) -> tuple[tuple[ViewRead, str, float | None], ...]:
        """Each view with its join key and its TTL in seconds (None: no TTL)."""
        return tuple((v, v.join_key, None if v.ttl is None else v.ttl.total_seconds()) for v in self.views)


def for_model(plan: FeaturePlan, names: Sequence[str]) -> FeaturePlan:
    """The plan narrowed to a model's own features, in the model's order (any subset of the service's, any order).

    Vectors are built by name (`build_rows`), so the model gets its columns in its order; views, request-time and
    on-demand features that none of them needs are not read, and a view the model does not read cannot make its
    score `uncertain`. Raises UnknownFeatureService naming each feature the service does not serve."""
    if tuple(names) == plan.features:
        return plan
    missing = [n for n in names if n not in plan.features]
    if missing:
        raise UnknownFeatureService(
            f"feature service {plan.feature_service} does not serve every feature the model reads",
            [f"{n}: not a feature of {plan.feature_service}" for n in missing],
        )
    wanted = set(names)
    on_demand = tuple(read for read in plan.on_demand if wanted & set(read.features))
    request_time = tuple(n for n in plan.request_time if n in wanted)
    inputs = {view for read in on_demand for view, _ in read.inputs}
    if request_time:
        inputs.add("card_features")
    return replace(
        plan,
        features=tuple(names),
        views=tuple(v for v in plan.views if wanted & set(v.served) or v.view in inputs),
        transaction_fields=tuple(n for n in plan.transaction_fields if n in wanted),
        request_time=request_time,
        on_demand=on_demand,
    )


def catalog_of(store: FeatureStore) -> Catalog:
    """The catalog of what was applied to the store's registry (problems kept, not raised).

    The same derivation as `load_catalog` (pipelines.features.catalog.from_objects), from the registry rather than
    the repo's files: what the API serves is what `feast apply` registered and the pipelines wrote to Redis."""
    return from_objects(
        store.list_entities(allow_cache=True),
        store.list_feature_views(allow_cache=True),
        store.list_stream_feature_views(allow_cache=True),
        store.list_on_demand_feature_views(allow_cache=True),
        store.list_feature_services(),
    )


def transaction_layout(store: FeatureStore) -> tuple[str, tuple[str, ...]]:
    """The transaction view's join key and fields as registered; SPEC's event before anything is applied (an API
    started on an empty registry comes up live, not ready)."""
    try:
        catalog = catalog_of(store)
    except CatalogError:
        return "transaction_id", tuple(BUILTIN_TRANSACTION_FIELDS)
    return catalog.transaction.join_key, tuple(catalog.transaction_fields)


def _view_problems(catalog: Catalog, view: str) -> list[str]:
    return [p for p in catalog.problems if p.startswith((f"{view}:", f"{view}."))]


def resolve_plan(store: FeatureStore, feature_service: str, catalog: Catalog | None = None) -> FeaturePlan:
    """Resolve a Feast feature service into a plan (once per model load, never per request).

    Raises UnknownFeatureService for a service Feast does not know, or one with a view the API cannot serve."""
    try:
        service = store.get_feature_service(feature_service, allow_cache=True)
    except Exception as exc:  # Feast raises its own FeatureServiceNotFoundException
        raise UnknownFeatureService(f"unknown feature service {feature_service!r}") from exc
    try:
        catalog = catalog or catalog_of(store)
    except CatalogError as exc:
        raise UnknownFeatureService(f"feature service {feature_service} cannot be served", exc.problems) from exc
    return _Resolver(store, catalog, feature_service).resolve(service)


class _Resolver:
    def __init__(self, store: FeatureStore, catalog: Catalog, service: str) -> None:
        self.store = store
        self.catalog = catalog
        self.service = service
        self.windows = {v.view: v for v in catalog.window_views}
        self.batches = {v.view: v for v in catalog.batch_views}
        self.problems: list[str] = []
        self.reads: dict[str, dict[str, None]] = {}  # view -> features to read (ordered set)
        self.served: dict[str, list[str]] = {}

    def _online_view(self, view: str, features: Sequence[str], why: str) -> bool:
        """Note features to read from a window or batch view; False (with a problem) when it is neither."""
        if view not in self.windows and view not in self.batches:
            found = _view_problems(self.catalog, view)
            if found:
                self.problems.extend(found)
            else:
                self.problems.append(
                    f"{view}: {why} is not a window view (a StreamFeatureView over the transaction events), a batch "
                    f"view keyed by a transaction field, {TRANSACTION_VIEW} or an on-demand view"
                )
            return False
        self.reads.setdefault(view, {}).update(dict.fromkeys(features))
        return True

    def _entity_name(self, view: str, join_key: str) -> str:
        try:
            names = list(self.store.get_feature_view(view, allow_registry_cache=True).entities)
        except Exception:
            names = []
        known = {e.join_key: e.name for e in self.catalog.entities}
        return names[0] if names else known.get(join_key, join_key)

    def _ttl(self, view: str) -> timedelta | None:
        if view in self.windows:
            ttl: timedelta | None = self.store.get_stream_feature_view(view, allow_registry_cache=True).ttl
        else:
            ttl = self.store.get_feature_view(view, allow_registry_cache=True).ttl
        return ttl if ttl and ttl > timedelta(0) else None

    def _on_demand(self, name: str, features: list[str]) -> OnDemandRead | None:
        try:
            odfv = self.store.get_on_demand_feature_view(name, allow_registry_cache=True)
        except Exception as exc:
            self.problems.append(f"{name}: the registry has no on-demand view of that name ({exc})")
            return None
        where = f"{name}: on-demand view"
        ok = True
        if odfv.mode not in ("python", "pandas"):
            self.problems.append(f"{where} in mode {odfv.mode!r}: the API computes python and pandas modes only")
            ok = False
        if odfv.write_to_online_store:
            self.problems.append(f"{where} with write_to_online_store: the API computes on-demand views itself")
            ok = False
        if odfv.aggregations:
            self.problems.append(f"{where} with aggregations: not servable by the API")
            ok = False
        inputs: list[tuple[str, str]] = []
        join_keys: dict[str, None] = {self.catalog.transaction.join_key: None}
        for projection in odfv.source_feature_view_projections.values():
            names = [f.name for f in projection.features]
            inputs.extend((projection.name, f) for f in names)
            if projection.name == TRANSACTION_VIEW:
                continue
            if self._online_view(projection.name, names, f"its source {projection.name}"):
                view = self.windows.get(projection.name)
                key = view.join_key if view is not None else self.batches[projection.name].join_key
                join_keys[key] = None
            else:
                self.problems.append(f"{where}: its source {projection.name} is not servable")
                ok = False
        fields = self.catalog.event_fields
        request: list[str] = []
        for source in odfv.source_request_sources.values():
            for f in source.schema:
                if f.name not in fields:
                    self.problems.append(
                        f"{where}: request field {f.name!r} of {source.name} is not a transaction field "
                        f"({', '.join(fields)}); the API takes request data from the transaction"
                    )
                    ok = False
                request.append(f.name)
        schema = {f.name: f.dtype for f in odfv.features}
        types = tuple(schema[f].to_value_type() if f in schema else None for f in features)
        if not ok:
            return None
        return OnDemandRead(name, odfv, tuple(features), tuple(inputs), tuple(request), tuple(join_keys), types)

    def resolve(self, service: Any) -> FeaturePlan:
        names: list[str] = []
        transaction_fields: list[str] = []
        request_time: list[str] = []
        on_demand: list[OnDemandRead] = []
        for projection in service.feature_view_projections:
            view = projection.name
            features = [f.name for f in projection.features]
            names.extend(features)
            if view == TRANSACTION_VIEW:
                unknown = [f for f in features if f not in self.catalog.transaction_fields]
                if unknown:
                    self.problems.append(f"{view}: no field {', '.join(map(repr, unknown))}")
                transaction_fields.extend(features)
            elif view in self.windows or view in self.batches:
                self._online_view(view, features, "it")
                self.served.setdefault(view, []).extend(features)
            elif view in self.catalog.on_demand_views:
                if self._is_builtin_request_view(view, features):
                    request_time.extend(features)
                    self._online_view("card_features", ["card_amount_mean_7d"], "card_features")
                else:
                    computed = self._on_demand(view, features)
                    if computed is not None:
                        on_demand.append(computed)
            else:
                self._online_view(view, features, "it")  # names the catalog's problem with it, or its type
        if self.problems:
            raise UnknownFeatureService(
                f"feature service {self.service} cannot be served by the API", list(dict.fromkeys(self.problems))
            )
        views = []
        for view, read in self.reads.items():
            window = self.windows.get(view)
            if window is not None:
                entity, kind = window.entity, WINDOW
            else:
                batch = self.batches[view]
                entity = EntitySpec(self._entity_name(view, batch.join_key), batch.join_key)
                kind = BATCH
            if self.catalog.transaction_fields.get(entity.join_key) != "string":
                raise UnknownFeatureService(
                    f"feature service {self.service} cannot be served by the API",
                    [f"{view}: its join key {entity.join_key!r} is not a string field of {TRANSACTION_VIEW}"],
                )
            views.append(ViewRead(view, entity, kind, self._ttl(view), tuple(read), tuple(self.served.get(view, ()))))
        return FeaturePlan(
            self.service,
            tuple(names),
            tuple(views),
            tuple(transaction_fields),
            tuple(request_time),
            tuple(on_demand),
            tuple(self.catalog.transaction_fields),
            tuple(self.catalog.extra_fields.items()),
        )

    def _is_builtin_request_view(self, view: str, features: Sequence[str]) -> bool:
        """The built-in request-time view, as definitions.py declares it (then computed by the vectorised path)."""
        if view != BUILTIN_REQUEST_VIEW or not set(features) <= set(REQUEST_TIME_FEATURES):
            return False
        if "card_features" not in self.windows:
            return False
        try:
            odfv = self.store.get_on_demand_feature_view(view, allow_registry_cache=True)
        except Exception:
            return False
        inputs = {(p.name, f.name) for p in odfv.source_feature_view_projections.values() for f in p.features}
        return (
            inputs == set(BUILTIN_REQUEST_INPUTS)
            and not odfv.source_request_sources
            and {f.name for f in odfv.features} == set(REQUEST_TIME_FEATURES)
        )
