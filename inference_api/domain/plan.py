"""A feature plan: where each of a model's features comes from, resolved once per feature service.

A model reads its feature service's features in manifest order. Each comes from one of three places: an entity
feature view in the online store (card, merchant, device, ip), the transaction's own fields (the transaction view,
or the request for an inline transaction), or the request-time functions of `pipelines.features.request_time`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.features.catalog import ENTITIES, TRANSACTION, EntitySpec
from pipelines.features.request_time import REQUEST_TIME_FEATURES

if TYPE_CHECKING:
    from feast import FeatureStore

ENTITY_BY_VIEW = {e.view: e for e in ENTITIES}


class UnknownFeatureService(LookupError):
    pass


@dataclass(frozen=True)
class ViewRead:
    """Features to read from one entity view."""

    entity: EntitySpec
    features: tuple[str, ...]

    @property
    def refs(self) -> list[str]:
        return [f"{self.entity.view}:{f}" for f in self.features]


@dataclass(frozen=True)
class FeaturePlan:
    feature_service: str
    features: tuple[str, ...]  # in the service's (and the model's) order
    views: tuple[ViewRead, ...]  # entity views to read
    transaction_fields: tuple[str, ...]  # features taken from the transaction itself
    request_time: tuple[str, ...]  # features computed at request time

    @property
    def entity_keys(self) -> tuple[str, ...]:
        return tuple(v.entity.join_key for v in self.views)


def resolve_plan(store: FeatureStore, feature_service: str) -> FeaturePlan:
    """Resolve a Feast feature service into a plan (once per model load, never per request)."""
    try:
        service = store.get_feature_service(feature_service)
    except Exception as exc:  # Feast raises its own FeatureServiceNotFoundException
        raise UnknownFeatureService(feature_service) from exc
    names: list[str] = []
    views: list[ViewRead] = []
    transaction_fields: list[str] = []
    request_time: list[str] = []
    for projection in service.feature_view_projections:
        features = [f.name for f in projection.features]
        names.extend(features)
        if projection.name in ENTITY_BY_VIEW:
            views.append(ViewRead(ENTITY_BY_VIEW[projection.name], tuple(features)))
        elif projection.name == TRANSACTION.view:
            transaction_fields.extend(features)
        elif set(features) <= set(REQUEST_TIME_FEATURES):
            request_time.extend(features)
        else:
            raise UnknownFeatureService(f"{feature_service}: feature view {projection.name} is not servable")
    return FeaturePlan(feature_service, tuple(names), tuple(views), tuple(transaction_fields), tuple(request_time))
