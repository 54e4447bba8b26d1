"""Entities and window features, declared once.

Everything else is derived from this table: the Feast feature views (`feature_repo/`), the offline SQL
(`pipelines.offline.sql`), the pure per-event semantics that the stream reuses (`pipelines.features.semantics`).

Windows follow SPEC: the value of a window feature for an entity's event at time t covers that entity's events with
timestamp in (t - W, t], the event at t and its same-timestamp peers included. Timestamps are integer epoch
milliseconds, so (t - W, t] is [t - W + 1 ms, t].
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class Agg(StrEnum):
    """How a window feature folds the events in its window."""

    COUNT = "count"  # number of events
    SUM = "sum"  # sum of `column`
    MEAN = "mean"  # sum / count of `column`
    MAX = "max"  # maximum of `column`
    DISTINCT = "distinct"  # number of distinct non-null values of `column`
    SECONDS_SINCE_PREV = "seconds_since_prev"  # t minus the latest timestamp strictly before t, in seconds
    FRAUD_RATE = "fraud_rate"  # events whose label in force at t says fraud, over all events in the window


@dataclass(frozen=True)
class EntitySpec:
    """A Feast entity and the feature view that holds its window features."""

    name: str
    join_key: str
    view: str
    ttl: timedelta
    description: str


@dataclass(frozen=True)
class WindowFeature:
    """One window feature of one entity."""

    name: str
    entity: EntitySpec
    agg: Agg
    window: timedelta | None = None
    column: str | None = None

    @property
    def dtype(self) -> str:
        """Arrow/Feast value type: counts are integers, everything else is a float."""
        return "int64" if self.agg in (Agg.COUNT, Agg.DISTINCT) else "float64"

    @property
    def window_ms(self) -> int:
        if self.window is None:
            raise ValueError(f"feature {self.name} has no window")
        return int(self.window.total_seconds() * 1000)


CARD = EntitySpec("card", "card_id", "card_features", timedelta(days=7), "A payment card")
MERCHANT = EntitySpec("merchant", "merchant_id", "merchant_features", timedelta(days=30), "A merchant")
DEVICE = EntitySpec("device", "device_id", "device_features", timedelta(days=2), "A customer device")
IP = EntitySpec("ip", "ip_address", "ip_features", timedelta(days=2), "A client IP address")
TRANSACTION = EntitySpec(
    "transaction", "transaction_id", "transaction_features", timedelta(days=90), "One payment transaction"
)

ENTITIES: tuple[EntitySpec, ...] = (CARD, MERCHANT, DEVICE, IP)

# The transaction view's fields (name -> value type): the event's own fields, so that a transaction can be scored
# by its id alone. The entity keys are fields here, not join keys: the view's only entity is the transaction.
TRANSACTION_FIELDS: dict[str, str] = {
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

_10M = timedelta(minutes=10)
_1H = timedelta(hours=1)
_24H = timedelta(hours=24)
_7D = timedelta(days=7)
_30D = timedelta(days=30)

WINDOW_FEATURES: tuple[WindowFeature, ...] = (
    WindowFeature("card_txn_count_10m", CARD, Agg.COUNT, _10M),
    WindowFeature("card_txn_count_1h", CARD, Agg.COUNT, _1H),
    WindowFeature("card_txn_count_24h", CARD, Agg.COUNT, _24H),
    WindowFeature("card_amount_sum_1h", CARD, Agg.SUM, _1H, "amount"),
    WindowFeature("card_amount_sum_24h", CARD, Agg.SUM, _24H, "amount"),
    WindowFeature("card_amount_mean_7d", CARD, Agg.MEAN, _7D, "amount"),
    WindowFeature("card_amount_max_7d", CARD, Agg.MAX, _7D, "amount"),
    WindowFeature("card_distinct_merchants_24h", CARD, Agg.DISTINCT, _24H, "merchant_id"),
    WindowFeature("card_distinct_countries_24h", CARD, Agg.DISTINCT, _24H, "country"),
    WindowFeature("card_distinct_devices_7d", CARD, Agg.DISTINCT, _7D, "device_id"),
    WindowFeature("card_seconds_since_prev_txn", CARD, Agg.SECONDS_SINCE_PREV),
    WindowFeature("merchant_txn_count_1h", MERCHANT, Agg.COUNT, _1H),
    WindowFeature("merchant_txn_count_24h", MERCHANT, Agg.COUNT, _24H),
    WindowFeature("merchant_amount_mean_7d", MERCHANT, Agg.MEAN, _7D, "amount"),
    WindowFeature("merchant_fraud_rate_30d", MERCHANT, Agg.FRAUD_RATE, _30D),
    WindowFeature("device_distinct_cards_24h", DEVICE, Agg.DISTINCT, _24H, "card_id"),
    WindowFeature("ip_distinct_cards_24h", IP, Agg.DISTINCT, _24H, "card_id"),
    WindowFeature("ip_txn_count_1h", IP, Agg.COUNT, _1H),
)


def features_of(entity: EntitySpec) -> tuple[WindowFeature, ...]:
    """The window features of one entity, in catalog order."""
    return tuple(f for f in WINDOW_FEATURES if f.entity == entity)


def max_window(entity: EntitySpec) -> timedelta:
    """The longest window of an entity: how much history its state must keep."""
    return max((f.window for f in features_of(entity) if f.window is not None), default=timedelta(0))
