"""Reading feature vectors back from the online store through Feast's SDK (the demo and the tests use it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipelines.features.catalog import TRANSACTION_VIEW
from pipelines.online_layout import ABSENT_KEY

if TYPE_CHECKING:
    from feast import FeatureStore


def _catalog(store: FeatureStore) -> Any:
    from inference_api.domain.plan import catalog_of

    return catalog_of(store)


def entity_fields(store: FeatureStore) -> list[str]:
    """The join keys of the repo's views keyed by a transaction field (card, merchant, device, IP, ...)."""
    return list(dict.fromkeys(e.join_key for e in _catalog(store).entities))


def transaction_entities(
    store: FeatureStore, transaction_ids: Sequence[str], fields: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The entity keys of each transaction (and any other of its `fields`), looked up by transaction id."""
    catalog = _catalog(store)
    join_key = catalog.transaction.join_key
    names = list(dict.fromkeys(fields if fields is not None else entity_fields(store)))
    refs = [f"{TRANSACTION_VIEW}:{field}" for field in names]
    found = store.get_online_features(features=refs, entity_rows=[{join_key: t} for t in transaction_ids]).to_dict()
    rows = []
    for i, transaction_id in enumerate(transaction_ids):
        row: dict[str, Any] = {join_key: transaction_id}
        row.update({field: found[field][i] for field in names})
        rows.append(row)
    return rows


def _request_fields(store: FeatureStore, feature_service: str) -> list[str]:
    """Request data the service's on-demand views take (fields of the transaction, passed in the entity rows)."""
    names: list[str] = []
    odfvs = {v.name: v for v in store.list_on_demand_feature_views(allow_cache=True)}
    for projection in store.get_feature_service(feature_service).feature_view_projections:
        odfv = odfvs.get(projection.name)
        if odfv is not None:
            names.extend(f.name for source in odfv.source_request_sources.values() for f in source.schema)
    return names


def feature_vectors(store: FeatureStore, feature_service: str, transaction_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The feature service's online vector for each ingested transaction, read through Feast."""
    keys = entity_fields(store)
    request = [f for f in _request_fields(store, feature_service) if f not in keys]
    rows = transaction_entities(store, transaction_ids, [*keys, *request])
    lookup = [{k: ABSENT_KEY if v is None and k in keys else v for k, v in row.items()} for row in rows]
    service = store.get_feature_service(feature_service)
    result = store.get_online_features(features=service, entity_rows=lookup).to_dict()
    vectors = []
    for i, row in enumerate(rows):
        vector = {name: values[i] for name, values in result.items()}
        vector.update(row)
        vectors.append(vector)
    return vectors
