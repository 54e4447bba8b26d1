"""The transaction and label events of SPEC, as Arrow schemas, and their validation rules.

The rules live here once. They are applied column-wise (pyarrow compute) so that the offline pipeline can check
millions of rows quickly and the stream can check a batch of events with the same code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from pipelines.features.catalog import Catalog

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

# Arrow types of the extra event fields a data engineer declares on `transaction_features` (catalog type names).
EXTRA_FIELD_TYPES: dict[str, pa.DataType] = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}


def with_extra_fields(extra: Mapping[str, str]) -> EventKind:
    """TRANSACTIONS extended with extra typed fields (name -> "string" | "int64" | "float64"), nullable, in order.

    Names SPEC's event already has are skipped; with nothing to add this is TRANSACTIONS itself."""
    fields: list[pa.Field] = []
    for name, kind in extra.items():
        if name in TRANSACTION_SCHEMA.names:
            continue
        dtype = EXTRA_FIELD_TYPES.get(kind)
        if dtype is None:
            raise ValueError(f"extra event field {name!r} has type {kind!r}; one of {', '.join(EXTRA_FIELD_TYPES)}")
        fields.append(pa.field(name, dtype, nullable=True))
    if not fields:
        return TRANSACTIONS
    schema = pa.schema([*TRANSACTION_SCHEMA, *fields])
    return EventKind(TRANSACTIONS.name, schema, TRANSACTIONS.id_field, TRANSACTIONS.time_field)


def transaction_kind(catalog: Catalog | None = None) -> EventKind:
    """The transaction events as the Feast repo declares them: TRANSACTIONS plus `catalog.extra_fields`.

    Without a catalog, this run's (`load_catalog()`). Validation (`pipelines.validation.check`) types the extra
    fields and keeps them in its valid table; fields an event carries that are not declared are ignored."""
    if catalog is None:
        from pipelines.features.catalog import load_catalog

        catalog = load_catalog()
    return with_extra_fields(catalog.extra_fields)


def is_rfc3339(value: str) -> bool:
    """True when `value` is an RFC 3339 date-time with a zone."""
    return _compiled_rfc3339.match(value) is not None
