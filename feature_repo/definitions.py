"""fraudserve's Feast objects: the built-in entities, sources, feature views, on-demand view and feature services.

This file is the catalog of the built-in features, in Feast's own classes; a data engineer adds features the same
way, in another `.py` file beside it (`from definitions import card, transactions_source`). fraudserve reads the
repo to know what to compute: each `StreamFeatureView` over `transactions_source` declares window features with
`Aggregation(column, function, time_window, name)` (functions: count, sum, mean, min, max, count_distinct,
seconds_since_prev, fraud_rate), which the backfill, the stream worker and the API compute and serve with SPEC's
window, tie and null rules. The offline store is the Parquet files that `fraudserve features backfill` writes under
$FRAUDSERVE_HOME/offline, one per view.
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, StreamFeatureView, ValueType
from feast.aggregation import Aggregation
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

# Feast marks StreamFeatureView as alpha with a RuntimeWarning on every declaration; fraudserve computes them itself.
warnings.filterwarnings("ignore", message="Stream feature views are experimental", category=RuntimeWarning)

_offline = Path(os.environ.get("FRAUDSERVE_HOME", ".fraudserve")).expanduser().resolve() / "offline"

# ------------------------------------------------------------------------------------------------------- entities
card = Entity(name="card", join_keys=["card_id"], value_type=ValueType.STRING, description="A payment card")
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.STRING, description="A merchant")
device = Entity(name="device", join_keys=["device_id"], value_type=ValueType.STRING, description="A customer device")
ip = Entity(name="ip", join_keys=["ip_address"], value_type=ValueType.STRING, description="A client IP address")
transaction = Entity(
    name="transaction", join_keys=["transaction_id"], value_type=ValueType.STRING, description="One payment transaction"
)

# -------------------------------------------------------------------------------------------------------- sources
# The transaction events: pushed by the stream worker, kept offline as the backfill's transactions file.
transactions_source = PushSource(
    name="transactions",
    batch_source=FileSource(
        name="transactions_file", path=str(_offline / "transactions.parquet"), timestamp_field="event_timestamp"
    ),
)

# ----------------------------------------------------------------------------------------- the event's own fields
transaction_features = FeatureView(
    name="transaction_features",
    entities=[transaction],
    ttl=timedelta(days=90),
    # The event's fields (the entity keys are fields here, not join keys: the view's only entity is the
    # transaction). An extra event field is one more typed Field here (e.g. Field(name="customer_id", dtype=String)).
    schema=[
        Field(name="card_id", dtype=String),
        Field(name="merchant_id", dtype=String),
        Field(name="device_id", dtype=String),
        Field(name="ip_address", dtype=String),
        Field(name="amount", dtype=Float64),
        Field(name="currency", dtype=String),
        Field(name="merchant_category", dtype=String),
        Field(name="country", dtype=String),
        Field(name="event_time_ms", dtype=Int64),
    ],
    source=transactions_source,
    online=True,
    description="The transaction event's own fields, so that a transaction can be scored by its id alone.",
)

# --------------------------------------------------------------------------------------------- window features
_10M, _1H, _24H, _7D, _30D = (
    timedelta(minutes=10), timedelta(hours=1), timedelta(hours=24), timedelta(days=7), timedelta(days=30)
)  # fmt: skip


def _fields(aggregations: list[Aggregation]) -> list[Field]:
    """One schema Field per aggregation: counts are integers, everything else a float."""
    return [
        Field(name=a.name, dtype=Int64 if a.function in ("count", "count_distinct") else Float64) for a in aggregations
    ]


_card_aggregations = [
    Aggregation(column="transaction_id", function="count", time_window=_10M, name="card_txn_count_10m"),
    Aggregation(column="transaction_id", function="count", time_window=_1H, name="card_txn_count_1h"),
    Aggregation(column="transaction_id", function="count", time_window=_24H, name="card_txn_count_24h"),
    Aggregation(column="amount", function="sum", time_window=_1H, name="card_amount_sum_1h"),
    Aggregation(column="amount", function="sum", time_window=_24H, name="card_amount_sum_24h"),
    Aggregation(column="amount", function="mean", time_window=_7D, name="card_amount_mean_7d"),
    Aggregation(column="amount", function="max", time_window=_7D, name="card_amount_max_7d"),
    Aggregation(column="merchant_id", function="count_distinct", time_window=_24H, name="card_distinct_merchants_24h"),
    Aggregation(column="country", function="count_distinct", time_window=_24H, name="card_distinct_countries_24h"),
    Aggregation(column="device_id", function="count_distinct", time_window=_7D, name="card_distinct_devices_7d"),
    Aggregation(column="event_timestamp", function="seconds_since_prev", name="card_seconds_since_prev_txn"),
]
card_features = StreamFeatureView(
    name="card_features",
    source=transactions_source,
    entities=[card],
    ttl=timedelta(days=7),
    timestamp_field="event_timestamp",
    aggregations=_card_aggregations,
    schema=_fields(_card_aggregations),
    online=True,
    description="Window features of a card, as of its latest event.",
)

_merchant_aggregations = [
    Aggregation(column="transaction_id", function="count", time_window=_1H, name="merchant_txn_count_1h"),
    Aggregation(column="transaction_id", function="count", time_window=_24H, name="merchant_txn_count_24h"),
    Aggregation(column="amount", function="mean", time_window=_7D, name="merchant_amount_mean_7d"),
    Aggregation(column="is_fraud", function="fraud_rate", time_window=_30D, name="merchant_fraud_rate_30d"),
]
merchant_features = StreamFeatureView(
    name="merchant_features",
    source=transactions_source,
    entities=[merchant],
    ttl=timedelta(days=30),
    timestamp_field="event_timestamp",
    aggregations=_merchant_aggregations,
    schema=_fields(_merchant_aggregations),
    online=True,
    description="Window features of a merchant, as of its latest event.",
)

_device_aggregations = [
    Aggregation(column="card_id", function="count_distinct", time_window=_24H, name="device_distinct_cards_24h"),
]
device_features = StreamFeatureView(
    name="device_features",
    source=transactions_source,
    entities=[device],
    ttl=timedelta(days=2),
    timestamp_field="event_timestamp",
    aggregations=_device_aggregations,
    schema=_fields(_device_aggregations),
    online=True,
    description="Window features of a customer device, as of its latest event.",
)

_ip_aggregations = [
    Aggregation(column="card_id", function="count_distinct", time_window=_24H, name="ip_distinct_cards_24h"),
    Aggregation(column="transaction_id", function="count", time_window=_1H, name="ip_txn_count_1h"),
]
ip_features = StreamFeatureView(
    name="ip_features",
    source=transactions_source,
    entities=[ip],
    ttl=timedelta(days=2),
    timestamp_field="event_timestamp",
    aggregations=_ip_aggregations,
    schema=_fields(_ip_aggregations),
    online=True,
    description="Window features of a client IP address, as of its latest event.",
)


# ------------------------------------------------------------------------------------------ request-time features
@on_demand_feature_view(
    # Projections, not whole views: the transaction view also holds the entity keys (card_id, ...), which must not
    # be pulled into training sets and feature vectors beside the entity columns of the same names.
    sources=[card_features[["card_amount_mean_7d"]], transaction_features[["amount", "event_time_ms"]]],
    schema=[
        Field(name="amount_to_card_mean_7d", dtype=Float64),
        Field(name="hour_of_day_utc", dtype=Int64),
        Field(name="day_of_week_utc", dtype=Int64),
    ],
    mode="pandas",
    description="Request-time features of the transaction being scored.",
)
def transaction_request_features(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast serializes this function without its module: import what it calls inside it.
    from pipelines.features.request_time import request_time_features

    return request_time_features(inputs["amount"], inputs["event_time_ms"], inputs["card_amount_mean_7d"])


# ---------------------------------------------------------------------------------------------- feature services
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
