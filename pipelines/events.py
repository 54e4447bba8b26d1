"""The transaction and label events of SPEC, as Arrow schemas, and their validation rules.

The rules live here once. They are applied column-wise (pyarrow compute) so that the offline pipeline can check
millions of rows quickly and the stream can check a batch of events with the same code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

TIMESTAMP = pa.timestamp("ms", tz="UTC")

TRANSACTION_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("card_id", pa.string(), nullable=False),
        pa.field("merchant_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string()),
        pa.field("ip_address", pa.string()),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("currency", pa.string(), nullable=False),
        pa.field("merchant_category", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("event_timestamp", TIMESTAMP, nullable=False),
    ]
)

LABEL_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("label_timestamp", TIMESTAMP, nullable=False),
    ]
)

TRANSACTION_ID_MAX_LEN = 64
ID_MAX_LEN = 128
# Epoch milliseconds accepted as event time: 2000-01-01 .. 2100-01-01 (anything else is a unit mistake).
MIN_EPOCH_MS = 946_684_800_000
MAX_EPOCH_MS = 4_102_444_800_000

CURRENCY_RE = r"^[A-Z]{3}$"
MCC_RE = r"^[0-9]{4}$"
COUNTRY_RE = r"^[A-Z]{2}$"
# RFC 3339: date, 'T' or space, time with optional fraction, and a zone (Z or +hh:mm).
RFC3339_RE = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"

_compiled_rfc3339 = re.compile(RFC3339_RE)


@dataclass(frozen=True)
class EventKind:
    """Which of SPEC's two event kinds a file or a stream carries."""

    name: str
    schema: pa.Schema
    id_field: str
    time_field: str


TRANSACTIONS = EventKind("transaction", TRANSACTION_SCHEMA, "transaction_id", "event_timestamp")
LABELS = EventKind("label", LABEL_SCHEMA, "transaction_id", "label_timestamp")


def is_rfc3339(value: str) -> bool:
    """True when `value` is an RFC 3339 date-time with a zone."""
    return _compiled_rfc3339.match(value) is not None
