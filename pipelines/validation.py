"""Column-wise validation of raw events against SPEC's rules.

Input is a batch of raw values as they came (Parquet columns of any reasonable type, or the Python values of
parsed JSON lines). Output is the valid rows in the canonical schema of `pipelines.events`, and the invalid rows
with the first offending field and the rule it broke, so that nothing is silently used or silently dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.events import (
    COUNTRY_RE,
    CURRENCY_RE,
    ID_MAX_LEN,
    LABELS,
    MAX_EPOCH_MS,
    MCC_RE,
    MIN_EPOCH_MS,
    RFC3339_RE,
    TRANSACTION_ID_MAX_LEN,
    TRANSACTIONS,
    EventKind,
)

REJECTED_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("value", pa.string()),
    ]
)


class SchemaError(ValueError):
    """A whole input column cannot be read as its SPEC type (for example amounts stored as text)."""


@dataclass(frozen=True)
class Checked:
    """One validated batch: the valid rows (canonical schema) and the rejected ones (REJECTED_SCHEMA)."""

    valid: pa.Table
    rejected: pa.Table
    valid_rows: np.ndarray  # input row numbers of the valid rows


# A column after typing: the array in its SPEC type (nulls where the value had the wrong type) and the mask of
# rows whose value had the wrong type.
Typed = tuple[pa.Array, np.ndarray]


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _exactly(values: Sequence[Any], types: frozenset[type], arrow_type: pa.DataType) -> pa.Array | None:
    """`values` as an Arrow array when every one is of exactly one of `types` (no subclass: `bool` is not `int` here)
    and Arrow converts them all; else None, and the caller types them value by value.

    The fast path of the typing below: when it answers, the answer equals the value-by-value one (no value of the
    wrong type, each converted as the slow path converts it: text as is, an integer to float exactly, since Arrow
    refuses the integers a double cannot hold exactly and those integers beyond int64)."""
    if not set(map(type, values)) <= types:
        return None
    try:
        return pa.array(values, arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None


_NONE = type(None)
_TEXT: frozenset[type] = frozenset({str, _NONE})
_NUMBER: frozenset[type] = frozenset({float, int, _NONE})
_INTEGER: frozenset[type] = frozenset({int, _NONE})
_BOOLEAN: frozenset[type] = frozenset({bool, _NONE})


def _typed_strings(values: pa.Array | Sequence[Any]) -> Typed:
    if isinstance(values, pa.Array):
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            return values.cast(pa.string()), np.zeros(len(values), dtype=bool)
        if pa.types.is_null(values.type):
            return pa.nulls(len(values), pa.string()), np.zeros(len(values), dtype=bool)
        raise SchemaError(f"is {values.type}, expected text")
    if (fast := _exactly(values, _TEXT, pa.string())) is not None:
        return fast, np.zeros(len(values), dtype=bool)
    bad = np.fromiter((v is not None and not isinstance(v, str) for v in values), bool, len(values))
    clean = [None if b else v for v, b in zip(values, bad, strict=True)]
    return pa.array(clean, pa.string()), bad


def _typed_floats(values: pa.Array | Sequence[Any]) -> Typed:
    if isinstance(values, pa.Array):
        if pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_decimal(values.type):
            return values.cast(pa.float64()), np.zeros(len(values), dtype=bool)
        if pa.types.is_null(values.type):
            return pa.nulls(len(values), pa.float64()), np.zeros(len(values), dtype=bool)
        raise SchemaError(f"is {values.type}, expected a number")
    if (fast := _exactly(values, _NUMBER, pa.float64())) is not None:
        return fast, np.zeros(len(values), dtype=bool)
    bad = np.fromiter((v is not None and not _is_number(v) for v in values), bool, len(values))
    clean = [None if b else (float(v) if v is not None else None) for v, b in zip(values, bad, strict=True)]
    return pa.array(clean, pa.float64()), bad


def _is_int64(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def _typed_ints(values: pa.Array | Sequence[Any]) -> Typed:
    """Integers as int64: a float (even a whole one), a bool or text is the wrong type, as for epoch milliseconds."""
    if isinstance(values, pa.Array):
        if pa.types.is_integer(values.type):
            try:
                return values.cast(pa.int64()), np.zeros(len(values), dtype=bool)
            except pa.ArrowInvalid as exc:
                raise SchemaError(f"is {values.type} with values beyond int64") from exc
        if pa.types.is_null(values.type):
            return pa.nulls(len(values), pa.int64()), np.zeros(len(values), dtype=bool)
        raise SchemaError(f"is {values.type}, expected an integer")
    if (fast := _exactly(values, _INTEGER, pa.int64())) is not None:
        return fast, np.zeros(len(values), dtype=bool)
    bad = np.fromiter((v is not None and not _is_int64(v) for v in values), bool, len(values))
    clean = [None if b else v for v, b in zip(values, bad, strict=True)]
    return pa.array(clean, pa.int64()), bad


def _typed_bools(values: pa.Array | Sequence[Any]) -> Typed:
    if isinstance(values, pa.Array):
        if pa.types.is_boolean(values.type):
            return values, np.zeros(len(values), dtype=bool)
        raise SchemaError(f"is {values.type}, expected true/false")
    if (fast := _exactly(values, _BOOLEAN, pa.bool_())) is not None:
        return fast, np.zeros(len(values), dtype=bool)
    bad = np.fromiter((v is not None and not isinstance(v, bool) for v in values), bool, len(values))
    clean = [None if b else v for v, b in zip(values, bad, strict=True)]
    return pa.array(clean, pa.bool_()), bad


def _parse_rfc3339_ms(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Epoch ms of RFC 3339 strings (sub-millisecond digits are truncated) and the mask of malformed ones."""
    matches = pc.fill_null(pc.match_substring_regex(texts, RFC3339_RE), False)
    ok = matches.to_numpy(zero_copy_only=False)
    candidates: pd.Series[Any] = pc.if_else(matches, texts, pa.scalar(None, pa.string())).to_pandas()
    parsed = pd.to_datetime(candidates, format="ISO8601", utc=True, errors="coerce")
    bad = ok & parsed.isna().to_numpy()
    ms = parsed.astype("datetime64[ms, UTC]").astype("int64").to_numpy(copy=True)
    null = ~ok | bad
    present = pc.is_valid(texts).to_numpy(zero_copy_only=False)
    return pa.array(np.where(null, 0, ms), pa.int64(), mask=null), bad | (~ok & present)


# Arrow timestamp units per millisecond (seconds are multiplied instead).
_PER_MS = {"ms": 1, "us": 1_000, "ns": 1_000_000}
# Seconds beyond this are clipped before becoming milliseconds (no overflow; still far outside 2000..2100).
_MAX_SECONDS = 2**53


def _timestamp_ms(values: pa.Array) -> pa.Array:
    """Epoch ms of an Arrow timestamp column of any unit, truncated (not rounded) to the millisecond.

    Arrow stores every timestamp as its UTC instant, so a zoned column (any zone) is converted to UTC by
    construction; a naive one is taken as UTC."""
    unit = values.type.unit
    raw = values.cast(pa.int64())
    if unit == "s":
        clipped = pc.min_element_wise(pc.max_element_wise(raw, -_MAX_SECONDS), _MAX_SECONDS)
        return pc.multiply(clipped, 1_000)
    per_ms = _PER_MS[unit]
    return raw if per_ms == 1 else pc.divide(raw, per_ms)  # integer division truncates toward zero


def _typed_timestamps(values: pa.Array | Sequence[Any]) -> Typed:
    """Event times as epoch milliseconds: RFC 3339 text with a zone, integer epoch ms, or Arrow timestamps of any
    unit (s, ms, us, ns), naive (taken as UTC) or zoned; sub-millisecond digits are truncated."""
    if isinstance(values, pa.Array):
        t = values.type
        if pa.types.is_timestamp(t):
            return _timestamp_ms(values), np.zeros(len(values), dtype=bool)
        if pa.types.is_integer(t):
            return values.cast(pa.int64()), np.zeros(len(values), dtype=bool)
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return _parse_rfc3339_ms(values.cast(pa.string()))
        if pa.types.is_null(t):
            return pa.nulls(len(values), pa.int64()), np.zeros(len(values), dtype=bool)
        raise SchemaError(f"is {t}, expected RFC 3339 text or epoch milliseconds")
    if (texts := _exactly(values, _TEXT, pa.string())) is not None:
        return _parse_rfc3339_ms(texts)
    if (ints := _exactly(values, _INTEGER, pa.int64())) is not None:
        # Out of range either way (beyond +-2**62 the slow path stores 0): the same rows are broken.
        return ints, np.zeros(len(values), dtype=bool)
    n = len(values)
    is_int = np.fromiter((isinstance(v, int) and not isinstance(v, bool) for v in values), bool, n)
    is_str = np.fromiter((isinstance(v, str) for v in values), bool, n)
    wrong = np.fromiter((v is not None for v in values), bool, n) & ~is_int & ~is_str
    # Typed as text even when every value is an integer or null (an all-null array has no regex kernel).
    texts = pa.array([v if s else None for v, s in zip(values, is_str, strict=True)], pa.string())
    text_ms, text_bad = _parse_rfc3339_ms(texts)
    ints = np.array([v if i and -(2**62) < v < 2**62 else 0 for v, i in zip(values, is_int, strict=True)], np.int64)
    ms = np.where(is_int, ints, text_ms.fill_null(0).to_numpy())
    null = ~(is_int | (is_str & ~text_bad))
    return pa.array(ms, pa.int64(), mask=null), wrong | text_bad


@dataclass(frozen=True)
class Rule:
    """How one field is typed, and when a typed value breaks SPEC (as a mask over the batch)."""

    field: str
    typed: Callable[[pa.Array | Sequence[Any]], Typed]
    broken: Callable[[pa.Array], pa.Array]
    message: str


def _required_text(max_len: int) -> Callable[[pa.Array], pa.Array]:
    def broken(a: pa.Array) -> pa.Array:
        length = pc.utf8_length(a)
        return pc.fill_null(pc.or_(pc.less(length, 1), pc.greater(length, max_len)), True)

    return broken


def _optional_text(max_len: int) -> Callable[[pa.Array], pa.Array]:
    def broken(a: pa.Array) -> pa.Array:
        length = pc.utf8_length(a)
        return pc.fill_null(pc.or_(pc.less(length, 1), pc.greater(length, max_len)), False)

    return broken


def _pattern(regex: str) -> Callable[[pa.Array], pa.Array]:
    return lambda a: pc.fill_null(pc.invert(pc.match_substring_regex(a, regex)), True)


def _amount_broken(a: pa.Array) -> pa.Array:
    return pc.fill_null(pc.or_(pc.invert(pc.is_finite(a)), pc.less(a, 0.0)), True)


def _time_broken(a: pa.Array) -> pa.Array:
    return pc.fill_null(pc.or_(pc.less(a, MIN_EPOCH_MS), pc.greater_equal(a, MAX_EPOCH_MS)), True)


def _required(a: pa.Array) -> pa.Array:
    return pc.is_null(a)


_TIME_MESSAGE = "required: RFC 3339 text with a zone (2026-11-01T12:00:00Z) or epoch milliseconds between 2000 and 2100"

TRANSACTION_RULES: tuple[Rule, ...] = (
    Rule(
        "transaction_id",
        _typed_strings,
        _required_text(TRANSACTION_ID_MAX_LEN),
        "required text, 1 to 64 characters",
    ),
    Rule("card_id", _typed_strings, _required_text(ID_MAX_LEN), f"required text, 1 to {ID_MAX_LEN} characters"),
    Rule(
        "merchant_id",
        _typed_strings,
        _required_text(ID_MAX_LEN),
        f"required text, 1 to {ID_MAX_LEN} characters",
    ),
    Rule(
        "device_id",
        _typed_strings,
        _optional_text(ID_MAX_LEN),
        f"null or text of 1 to {ID_MAX_LEN} characters",
    ),
    Rule(
        "ip_address",
        _typed_strings,
        _optional_text(ID_MAX_LEN),
        f"null or text of 1 to {ID_MAX_LEN} characters",
    ),
    Rule("amount", _typed_floats, _amount_broken, "required finite number >= 0"),
    Rule("currency", _typed_strings, _pattern(CURRENCY_RE), "required ISO 4217 code, 3 capital letters (USD)"),
    Rule(
        "merchant_category",
        _typed_strings,
        _pattern(MCC_RE),
        "required 4-digit merchant category code (5411)",
    ),
    Rule("country", _typed_strings, _pattern(COUNTRY_RE), "required ISO 3166-1 alpha-2 code (US)"),
    Rule("event_timestamp", _typed_timestamps, _time_broken, _TIME_MESSAGE),
)

LABEL_RULES: tuple[Rule, ...] = (
    Rule(
        "transaction_id",
        _typed_strings,
        _required_text(TRANSACTION_ID_MAX_LEN),
        "required text, 1 to 64 characters",
    ),
    Rule("is_fraud", _typed_bools, _required, "required true or false"),
    Rule("label_timestamp", _typed_timestamps, _time_broken, _TIME_MESSAGE),
)

RULES: dict[str, tuple[Rule, ...]] = {TRANSACTIONS.name: TRANSACTION_RULES, LABELS.name: LABEL_RULES}


def _never(a: pa.Array) -> pa.Array:
    return pa.array(np.zeros(len(a), dtype=bool))


def _not_finite(a: pa.Array) -> pa.Array:
    return pc.fill_null(pc.invert(pc.is_finite(a)), False)


# Extra declared fields (see `pipelines.events.transaction_kind`): nullable, checked by type only (a float must
# also be finite, as the amount).
_EXTRA_RULES: dict[
    pa.DataType, tuple[Callable[[pa.Array | Sequence[Any]], Typed], Callable[[pa.Array], pa.Array], str]
] = {
    pa.string(): (_typed_strings, _never, "null or text"),
    pa.int64(): (_typed_ints, _never, "null or an integer"),
    pa.float64(): (_typed_floats, _not_finite, "null or a finite number"),
}


def rules_for(kind: EventKind) -> tuple[Rule, ...]:
    """SPEC's rules of `kind`, then one type-only rule per extra field of its schema (declared extra fields)."""
    rules = RULES[kind.name]
    covered = {rule.field for rule in rules}
    extra: list[Rule] = []
    for field in kind.schema:
        if field.name in covered:
            continue
        rule = _EXTRA_RULES.get(field.type)
        if rule is None:
            raise ValueError(
                f"{kind.name} field {field.name!r} is {field.type}; extra fields are string, int64, float64"
            )
        extra.append(Rule(field.name, *rule))
    return rules + tuple(extra)


def _arrow_value(values: pa.Array, row: int) -> object:
    """One value of an Arrow column for a message; a timestamp beyond Python's datetime range as its raw integer."""
    try:
        return values[row].as_py()
    except (OverflowError, ValueError):
        return f"{values.type} {values[row].cast(pa.int64()).as_py()}"


def _display(value: object) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check(
    kind: EventKind,
    columns: Mapping[str, pa.Array | Sequence[Any]],
    rows: np.ndarray,
    unreadable: dict[int, str] | None = None,
) -> Checked:
    """Validate one batch of `kind` events given as columns; `rows` numbers them in the input (for messages).

    `kind` may be TRANSACTIONS extended with declared extra fields (`pipelines.events.transaction_kind`): each is
    typed and kept in the valid table; columns that are not fields of `kind` are ignored.

    `unreadable` marks rows (0-based in the batch) that could not be parsed at all, with the reason.
    """
    rules = rules_for(kind)
    n = len(rows)
    typed: dict[str, pa.Array] = {}
    field_of_error = np.full(n, -1, dtype=np.int64)
    for index, rule in enumerate(rules):
        raw = columns.get(rule.field)
        if raw is None:
            raw = pa.nulls(n)
        try:
            array, wrong_type = rule.typed(raw)
        except SchemaError as exc:
            raise SchemaError(f"{kind.name} column {rule.field!r} {exc}") from exc
        broken = pc.fill_null(rule.broken(array), True).to_numpy(zero_copy_only=False) | wrong_type
        field_of_error = np.where((field_of_error < 0) & broken, index, field_of_error)
        typed[rule.field] = array

    ok = field_of_error < 0
    for index in unreadable or {}:
        ok[index] = False
    mask = pa.array(ok)
    valid = pa.Table.from_pydict(
        {field.name: typed[field.name].filter(mask).cast(field.type) for field in kind.schema},
        schema=kind.schema,
    )

    bad_rows = np.flatnonzero(~ok)
    fields: list[str] = []
    reasons: list[str] = []
    values: list[str | None] = []
    for row in bad_rows.tolist():
        if unreadable and row in unreadable:
            fields.append("(line)")
            reasons.append(unreadable[row])
            values.append(None)
            continue
        rule = rules[int(field_of_error[row])]
        raw = columns.get(rule.field)
        value = None if raw is None else (_arrow_value(raw, row) if isinstance(raw, pa.Array) else raw[row])
        fields.append(rule.field)
        reasons.append(rule.message)
        values.append(_display(value))
    rejected = pa.Table.from_pydict(
        {
            "row": pa.array(rows[bad_rows], pa.int64()),
            "field": pa.array(fields, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "value": pa.array(values, pa.string()),
        },
        schema=REJECTED_SCHEMA,
    )
    return Checked(valid=valid, rejected=rejected, valid_rows=rows[ok])
