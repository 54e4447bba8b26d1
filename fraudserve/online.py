"""Reading feature vectors back from the online store through Feast's SDK (the demo and the tests use it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipelines.features.catalog import ENTITIES, TRANSACTION
from pipelines.online_layout import ABSENT_KEY

if TYPE_CHECKING:
    from feast import FeatureStore

ENTITY_FIELDS = [e.join_key for e in ENTITIES]


def transaction_entities(store: FeatureStore, transaction_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The entity keys of each transaction (card, merchant, device, IP), looked up by transaction id."""
    refs = [f"{TRANSACTION.view}:{field}" for field in ENTITY_FIELDS]
    found = store.get_online_features(
        features=refs, entity_rows=[{TRANSACTION.join_key: t} for t in transaction_ids]
    ).to_dict()
    rows = []
    for i, transaction_id in enumerate(transaction_ids):
        row: dict[str, Any] = {TRANSACTION.join_key: transaction_id}
        row.update({field: found[field][i] for field in ENTITY_FIELDS})
        rows.append(row)
    return rows


def feature_vectors(store: FeatureStore, feature_service: str, transaction_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The feature service's online vector for each ingested transaction, read through Feast."""
    rows = transaction_entities(store, transaction_ids)
    lookup = [{k: ABSENT_KEY if v is None else v for k, v in row.items()} for row in rows]
    service = store.get_feature_service(feature_service)
    result = store.get_online_features(features=service, entity_rows=lookup).to_dict()
    vectors = []
    for i, row in enumerate(rows):
        vector = {name: values[i] for name, values in result.items()}
        vector.update(row)
        vectors.append(vector)
    return vectors
