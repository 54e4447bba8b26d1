"""A data engineer's Feast repo for tests: a copy of feature_repo/ plus one file of their own declarations."""

from __future__ import annotations

import shutil
from pathlib import Path

from core.settings import PROJECT_ROOT

# Window features over a new entity on an existing event field (merchant_category), over an extra declared event
# field (customer_id), and a second view of the built-in card entity: every function, windows from 5 minutes to 30
# days, nullable columns.
USER_WINDOWS = """
from datetime import timedelta

from feast import Entity, Field, StreamFeatureView, ValueType
from feast.aggregation import Aggregation
from feast.types import Float64, Int64

from definitions import card, transactions_source

category = Entity(name="category", join_keys=["merchant_category"], value_type=ValueType.STRING)
customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)

_category = [
    Aggregation(column="transaction_id", function="count", time_window=timedelta(hours=1), name="cat_count_1h"),
    Aggregation(column="amount", function="sum", time_window=timedelta(hours=6), name="cat_amount_sum_6h"),
    Aggregation(column="amount", function="min", time_window=timedelta(days=1), name="cat_amount_min_1d"),
    Aggregation(column="card_id", function="count_distinct", time_window=timedelta(days=1), name="cat_cards_1d"),
    Aggregation(column="is_fraud", function="fraud_rate", time_window=timedelta(days=30), name="cat_fraud_rate_30d"),
]
category_windows = StreamFeatureView(
    name="category_windows",
    source=transactions_source,
    entities=[category],
    ttl=timedelta(days=30),
    timestamp_field="event_timestamp",
    aggregations=_category,
    schema=[
        Field(name="cat_count_1h", dtype=Int64),
        Field(name="cat_amount_sum_6h", dtype=Float64),
        Field(name="cat_amount_min_1d", dtype=Float64),
        Field(name="cat_cards_1d", dtype=Int64),
        Field(name="cat_fraud_rate_30d", dtype=Float64),
    ],
)

_customer = [
    Aggregation(column="amount", function="mean", time_window=timedelta(days=7), name="cust_amount_mean_7d"),
    Aggregation(column="device_id", function="count", time_window=timedelta(days=1), name="cust_devices_seen_1d"),
    Aggregation(column="loyalty_points", function="max", time_window=timedelta(days=7), name="cust_points_max_7d"),
    Aggregation(column="event_timestamp", function="seconds_since_prev", name="cust_seconds_since_prev"),
]
customer_windows = StreamFeatureView(
    name="customer_windows",
    source=transactions_source,
    entities=[customer],
    ttl=timedelta(days=7),
    timestamp_field="event_timestamp",
    aggregations=_customer,
    schema=[
        Field(name="cust_amount_mean_7d", dtype=Float64),
        Field(name="cust_devices_seen_1d", dtype=Int64),
        Field(name="cust_points_max_7d", dtype=Float64),
        Field(name="cust_seconds_since_prev", dtype=Float64),
    ],
)

_velocity = [
    Aggregation(column="amount", function="min", time_window=timedelta(minutes=5), name="card_amount_min_5m"),
    Aggregation(column="transaction_id", function="count", time_window=timedelta(minutes=5), name="card_count_5m"),
]
card_velocity = StreamFeatureView(
    name="card_velocity",
    source=transactions_source,
    entities=[card],
    ttl=timedelta(days=1),
    timestamp_field="event_timestamp",
    aggregations=_velocity,
    schema=[Field(name="card_amount_min_5m", dtype=Float64), Field(name="card_count_5m", dtype=Int64)],
)
"""

# The extra event fields the user's views read: one line each in definitions.py's transaction_features.
EXTRA_FIELDS = {"customer_id": "String", "loyalty_points": "Int64"}


def user_repo(target: Path, files: dict[str, str] | None = None, extra_fields: dict[str, str] | None = None) -> Path:
    """A copy of feature_repo/ at `target` with `files` (name -> source) added and `extra_fields` declared on
    transaction_features. Default: USER_WINDOWS as `user_windows.py` with EXTRA_FIELDS."""
    shutil.copytree(PROJECT_ROOT / "feature_repo", target, ignore=shutil.ignore_patterns("__pycache__", "data"))
    extra = EXTRA_FIELDS if extra_fields is None else extra_fields
    definitions = target / "definitions.py"
    text = definitions.read_text()
    anchor = '        Field(name="event_time_ms", dtype=Int64),\n'
    assert anchor in text
    lines = "".join(f'        Field(name="{name}", dtype={dtype}),\n' for name, dtype in extra.items())
    definitions.write_text(text.replace(anchor, anchor + lines))
    for name, source in (files if files is not None else {"user_windows.py": USER_WINDOWS}).items():
        (target / name).write_text(source)
    return target
