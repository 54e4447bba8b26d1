"""fraudserve's Feast objects: entities, sources, feature views, the on-demand view and the feature services.

Feature names, windows, types and TTLs come from the catalog in `pipelines.features`, the same definitions the
offline and streaming pipelines compute, so the three cannot drift apart. The offline store is the Parquet files
that `fraudserve features backfill` writes under $FRAUDSERVE_HOME/offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, PrimitiveFeastType, String

from pipelines.features.catalog import ENTITIES, TRANSACTION, TRANSACTION_FIELDS, EntitySpec, features_of
from pipelines.features.request_time import REQUEST_TIME_FEATURES
from pipelines.offline.store import OfflineLayout

_TYPES: dict[str, PrimitiveFeastType] = {"int64": Int64, "float64": Float64, "string": String}

_layout = OfflineLayout(Path(os.environ.get("FRAUDSERVE_HOME", ".fraudserve")).expanduser().resolve() / "offline")


def _entity(spec: EntitySpec) -> Entity:
    return Entity(name=spec.name, join_keys=[spec.join_key], value_type=ValueType.STRING, description=spec.description)


def _push_source(name: str) -> PushSource:
    batch = FileSource(name=f"{name}_file", path=str(_layout.file(name)), timestamp_field="event_timestamp")
    return PushSource(name=f"{name}_push", batch_source=batch)


card, merchant, device, ip = (_entity(spec) for spec in ENTITIES)
transaction = _entity(TRANSACTION)

card_features, merchant_features, device_features, ip_features = (
    FeatureView(
        name=spec.view,
        entities=[entity],
        ttl=spec.ttl,
        schema=[Field(name=f.name, dtype=_TYPES[f.dtype]) for f in features_of(spec)],
        source=_push_source(spec.view),
        online=True,
        description=f"Window features of a {spec.name}, as of its latest event.",
    )
    for spec, entity in zip(ENTITIES, (card, merchant, device, ip), strict=True)
)

transaction_features = FeatureView(
    name=TRANSACTION.view,
    entities=[transaction],
    ttl=TRANSACTION.ttl,
    schema=[Field(name=name, dtype=_TYPES[dtype]) for name, dtype in TRANSACTION_FIELDS.items()],
    source=PushSource(
        name="transactions_push",
        batch_source=FileSource(
            name="transactions_file", path=str(_layout.transactions_file), timestamp_field="event_timestamp"
        ),
    ),
    online=True,
    description="The transaction event's own fields, so that a transaction can be scored by its id alone.",
)


@on_demand_feature_view(
    # Projections, not whole views: the transaction view also holds the entity keys (card_id, ...), which must not
    # be pulled into training sets and feature vectors beside the entity columns of the same names.
    sources=[card_features[["card_amount_mean_7d"]], transaction_features[["amount", "event_time_ms"]]],
    schema=[Field(name=name, dtype=_TYPES[dtype]) for name, dtype in REQUEST_TIME_FEATURES.items()],
    mode="pandas",
    description="Request-time features of the transaction being scored.",
)
def transaction_request_features(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast serializes this function without its module: import what it calls inside it.
    from pipelines.features.request_time import request_time_features

    return request_time_features(inputs["amount"], inputs["event_time_ms"], inputs["card_amount_mean_7d"])


fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[
        card_features,
        merchant_features,
        transaction_features[["amount"]],
        transaction_request_features,
    ],
    description="Card, merchant, transaction and request-time features.",
)

fraud_v2 = FeatureService(
    name="fraud_v2",
    features=[
        card_features,
        merchant_features,
        device_features,
        ip_features,
        transaction_features[["amount"]],
        transaction_request_features,
    ],
    description="fraud_v1 plus device and IP features.",
)
