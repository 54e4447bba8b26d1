"""Raw inputs as SPEC accepts them: timestamps of any Parquet unit and zone, and declared extra event fields."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.events import LABELS, TRANSACTIONS, EventKind, transaction_kind, with_extra_fields
from pipelines.features.catalog import BUILTIN_TRANSACTION_FIELDS, Catalog, EntitySpec, load_catalog
from pipelines.offline.inputs import read_batches
from pipelines.validation import Checked, SchemaError, check

T0 = 1_762_000_000_000  # 2025-11-01T12:26:40Z in epoch ms (whole seconds)
# Instants in epoch nanoseconds with sub-millisecond digits that rounding would carry up, not truncation.
INSTANTS_NS = [
    T0 * 1_000_000 + 123_999_999,  # 12:26:40.123999999Z
    T0 * 1_000_000 + 1_000_001,  # 12:26:40.001000001Z
    (T0 + 86_400_000) * 1_000_000 + 999_999,  # the next day, 12:26:40.000999999Z
]
PER_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}

EXTRA = {"customer_id": "string", "customer_age": "int64", "risk_score": "float64"}


def event(transaction_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "card_id": "c1",
        "merchant_id": "m1",
        "device_id": "d1",
        "ip_address": "1.1.1.1",
        "amount": 10.0,
        "currency": "USD",
        "merchant_category": "5411",
        "country": "US",
        "event_timestamp": T0,
        **fields,
    }


def read_and_check(kind: EventKind, path: Path) -> Checked:
    batches = list(read_batches(path, kind.schema.names))
    assert len(batches) == 1
    return check(kind, batches[0].columns, batches[0].rows, batches[0].unreadable)


def expected_ms(unit: str) -> list[int]:
    """The UTC milliseconds of INSTANTS_NS stored in `unit`: sub-millisecond digits truncated."""
    return [ns // PER_NS[unit] * PER_NS[unit] // 1_000_000 for ns in INSTANTS_NS]


def times_in(unit: str, zone: str | None) -> pa.Array:
    return pa.array([ns // PER_NS[unit] for ns in INSTANTS_NS], pa.timestamp(unit, tz=zone))


UNITS = ["s", "ms", "us", "ns"]
ZONES = [None, "UTC", "Europe/Paris", "America/New_York"]


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("zone", ZONES)
def test_parquet_transaction_times_of_any_unit_and_zone(tmp_path: Path, unit: str, zone: str | None) -> None:
    table = pa.Table.from_pylist([event(f"t{i}") for i in range(len(INSTANTS_NS))])
    table = table.set_column(table.schema.get_field_index("event_timestamp"), "event_timestamp", times_in(unit, zone))
    path = tmp_path / "tx.parquet"
    pq.write_table(table, path)
    result = read_and_check(TRANSACTIONS, path)
    assert result.rejected.num_rows == 0
    assert result.valid.schema.equals(TRANSACTIONS.schema)
    assert result.valid.column("event_timestamp").cast(pa.int64()).to_pylist() == expected_ms(unit)


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("zone", ZONES)
def test_parquet_label_times_of_any_unit_and_zone(tmp_path: Path, unit: str, zone: str | None) -> None:
    table = pa.table(
        {
            "transaction_id": [f"t{i}" for i in range(len(INSTANTS_NS))],
            "is_fraud": [True, False, True],
            "label_timestamp": times_in(unit, zone),
        }
    )
    path = tmp_path / "labels.parquet"
    pq.write_table(table, path)
    result = read_and_check(LABELS, path)
    assert result.rejected.num_rows == 0
    assert result.valid.schema.equals(LABELS.schema)
    assert result.valid.column("label_timestamp").cast(pa.int64()).to_pylist() == expected_ms(unit)


# Wall clocks of INSTANTS_NS in UTC and in Paris (UTC+1 in November).
UTC_WALL = ["2025-11-01 12:26:40.123999999", "2025-11-01 12:26:40.001000001", "2025-11-02 12:26:40.000999999"]
PARIS_WALL = ["2025-11-01 13:26:40.123999999", "2025-11-01 13:26:40.001000001", "2025-11-02 13:26:40.000999999"]


@pytest.mark.parametrize(
    ("wall", "zone"), [(UTC_WALL, None), (UTC_WALL, "UTC"), (PARIS_WALL, "Europe/Paris")], ids=["naive", "utc", "paris"]
)
def test_pandas_written_files_with_nanoseconds(tmp_path: Path, wall: list[str], zone: str | None) -> None:
    """The reported failure: pandas writes timestamp[ns] ("Casting from timestamp to timestamp would lose data")."""
    times = pd.to_datetime(pd.Series(wall))
    if zone is not None:
        times = times.dt.tz_localize(zone)
    labels = pd.DataFrame(
        {"transaction_id": ["a", "b", "c"], "is_fraud": [True, False, True], "label_timestamp": times}
    )
    labels.to_parquet(tmp_path / "labels.parquet")
    assert pq.read_schema(tmp_path / "labels.parquet").field("label_timestamp").type.unit == "ns"
    transactions = pd.DataFrame([event(f"t{i}") for i in range(3)]).assign(event_timestamp=times)
    transactions.to_parquet(tmp_path / "tx.parquet")

    result = read_and_check(LABELS, tmp_path / "labels.parquet")
    assert result.rejected.num_rows == 0
    assert result.valid.column("label_timestamp").cast(pa.int64()).to_pylist() == expected_ms("ns")
    result = read_and_check(TRANSACTIONS, tmp_path / "tx.parquet")
    assert result.rejected.num_rows == 0
    assert result.valid.column("event_timestamp").cast(pa.int64()).to_pylist() == expected_ms("ns")


def test_jsonl_times_with_nanoseconds_and_offsets_are_truncated(tmp_path: Path) -> None:
    texts = [w.replace(" ", "T") + "+01:00" for w in PARIS_WALL]
    rows = [{"transaction_id": f"t{i}", "is_fraud": True, "label_timestamp": t} for i, t in enumerate(texts)]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = read_and_check(LABELS, path)
    assert result.rejected.num_rows == 0
    assert result.valid.column("label_timestamp").cast(pa.int64()).to_pylist() == expected_ms("ns")


def test_out_of_range_times_are_rejected_not_overflowed() -> None:
    rows = [event("a"), event("b"), event("c")]
    columns: dict[str, pa.Array | list[Any]] = {n: [r[n] for r in rows] for n in TRANSACTIONS.schema.names}
    columns["event_timestamp"] = pa.array([T0 // 1000, 2**62, 1_000], pa.timestamp("s"))  # fine, far future, 1970
    result = check(TRANSACTIONS, columns, np.arange(1, 4))
    assert [(r["row"], r["field"], r["value"]) for r in result.rejected.to_pylist()] == [
        (2, "event_timestamp", '"timestamp[s] 4611686018427387904"'),
        (3, "event_timestamp", '"1970-01-01 00:16:40"'),
    ]
    assert result.valid.column("event_timestamp").cast(pa.int64()).to_pylist() == [T0]


# ------------------------------------------------------------------------------------------- extra event fields
EXTENDED = with_extra_fields(EXTRA)


def test_extended_kind_is_transactions_plus_nullable_typed_fields() -> None:
    assert with_extra_fields({}) is TRANSACTIONS
    assert EXTENDED.name == TRANSACTIONS.name
    assert EXTENDED.id_field == TRANSACTIONS.id_field and EXTENDED.time_field == TRANSACTIONS.time_field
    assert EXTENDED.schema.names == [*TRANSACTIONS.schema.names, *EXTRA]
    assert [(f.type, f.nullable) for f in EXTENDED.schema][-3:] == [
        (pa.string(), True),
        (pa.int64(), True),
        (pa.float64(), True),
    ]
    assert with_extra_fields({"amount": "float64"}) is TRANSACTIONS  # SPEC's own fields are not added twice
    with pytest.raises(ValueError, match="'birthday' has type 'date'"):
        with_extra_fields({"birthday": "date"})


def catalog_with(extra: dict[str, str]) -> Catalog:
    return Catalog(
        transaction=EntitySpec("transaction", "transaction_id"),
        transaction_fields={**BUILTIN_TRANSACTION_FIELDS, **extra},
        entities=(),
        window_views=(),
    )


def test_transaction_kind_of_a_catalog() -> None:
    assert transaction_kind(catalog_with({})) is TRANSACTIONS
    assert transaction_kind(catalog_with(EXTRA)) == EXTENDED


def columns_of(rows: list[dict[str, Any]], names: list[str]) -> dict[str, pa.Array | list[Any]]:
    return {name: [r.get(name) for r in rows] for name in names}


def test_extra_fields_are_typed_and_kept_and_undeclared_ones_ignored() -> None:
    rows = [
        event("a", customer_id="cu1", customer_age=42, risk_score=0.25, note="not declared"),
        event("b", customer_id=None, customer_age=None, risk_score=None),
        event("c", risk_score=3),  # missing extra fields are null; an integer is a number
    ]
    result = check(EXTENDED, columns_of(rows, [*EXTENDED.schema.names, "note"]), np.arange(1, 4))
    assert result.rejected.num_rows == 0
    assert result.valid.schema.equals(EXTENDED.schema)
    assert "note" not in result.valid.column_names
    assert result.valid.select(list(EXTRA)).to_pylist() == [
        {"customer_id": "cu1", "customer_age": 42, "risk_score": 0.25},
        {"customer_id": None, "customer_age": None, "risk_score": None},
        {"customer_id": None, "customer_age": None, "risk_score": 3.0},
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("customer_id", 17),
        ("customer_id", True),
        ("customer_age", 1.5),
        ("customer_age", 2.0),  # a float is not an integer, as for epoch milliseconds
        ("customer_age", "3"),
        ("customer_age", True),
        ("customer_age", 2**63),
        ("risk_score", "0.5"),
        ("risk_score", False),
        ("risk_score", math.nan),
        ("risk_score", math.inf),
    ],
)
def test_extra_field_of_the_wrong_type_is_rejected_naming_it(field: str, value: object) -> None:
    rows = [event("ok", customer_id="cu1", customer_age=1, risk_score=0.5), event("bad", **{field: value})]
    result = check(EXTENDED, columns_of(rows, EXTENDED.schema.names), np.arange(1, 3))
    assert [(r["row"], r["field"]) for r in result.rejected.to_pylist()] == [(2, field)]
    assert result.valid.column("transaction_id").to_pylist() == ["ok"]


def test_extra_fields_from_parquet_and_jsonl(tmp_path: Path) -> None:
    rows = [
        event("a", customer_id="cu1", customer_age=42, risk_score=0.25, note="x"),
        event("b", customer_id="cu2", customer_age=None, risk_score=1.5, note="y"),
    ]
    table = pa.Table.from_pylist(rows).cast(
        pa.schema(
            [
                *(pa.field(n, pa.string()) for n in ("transaction_id", "card_id", "merchant_id", "device_id")),
                pa.field("ip_address", pa.string()),
                pa.field("amount", pa.float64()),
                *(pa.field(n, pa.string()) for n in ("currency", "merchant_category", "country")),
                pa.field("event_timestamp", pa.int64()),
                pa.field("customer_id", pa.dictionary(pa.int32(), pa.string())),
                pa.field("customer_age", pa.int32()),  # narrower Arrow types are widened
                pa.field("risk_score", pa.float32()),
                pa.field("note", pa.string()),
            ]
        )
    )
    pq.write_table(table, tmp_path / "tx.parquet")
    (tmp_path / "tx.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [
        {"customer_id": "cu1", "customer_age": 42, "risk_score": 0.25},
        {"customer_id": "cu2", "customer_age": None, "risk_score": 1.5},
    ]
    for name in ("tx.parquet", "tx.jsonl"):
        result = read_and_check(EXTENDED, tmp_path / name)
        assert result.rejected.num_rows == 0, name
        assert result.valid.schema.equals(EXTENDED.schema), name
        assert result.valid.select(list(EXTRA)).to_pylist() == expected, name
        # undeclared fields are not even read
        assert "note" not in next(iter(read_batches(tmp_path / name, EXTENDED.schema.names))).columns


@pytest.mark.parametrize(
    ("field", "column", "message"),
    [
        ("customer_id", pa.array([17], pa.int64()), "column 'customer_id' is int64, expected text"),
        ("customer_age", pa.array([1.5], pa.float64()), "column 'customer_age' is double, expected an integer"),
        ("customer_age", pa.array(["3"], pa.string()), "column 'customer_age' is string, expected an integer"),
        ("risk_score", pa.array(["0.5"], pa.string()), "column 'risk_score' is string, expected a number"),
    ],
)
def test_parquet_extra_column_of_the_wrong_type_is_a_schema_error(
    tmp_path: Path, field: str, column: pa.Array, message: str
) -> None:
    table = pa.Table.from_pylist([event("a")]).append_column(field, column)
    pq.write_table(table, tmp_path / "tx.parquet")
    with pytest.raises(SchemaError, match=message):
        read_and_check(EXTENDED, tmp_path / "tx.parquet")


def test_extra_fields_declared_in_the_feast_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data engineer's one more Field on transaction_features: events then carry it, typed."""
    repo = tmp_path / "feature_repo"
    shutil.copytree(Path(__file__).resolve().parents[2] / "feature_repo", repo)
    definitions = repo / "definitions.py"
    anchor = 'Field(name="event_time_ms", dtype=Int64),'
    text = definitions.read_text()
    assert anchor in text
    definitions.write_text(
        text.replace(
            anchor,
            anchor
            + ' Field(name="customer_id", dtype=String), Field(name="customer_age", dtype=Int64),'
            + ' Field(name="risk_score", dtype=Float64),',
        )
    )
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    catalog = load_catalog(repo)
    assert catalog.extra_fields == EXTRA
    kind = transaction_kind(catalog)
    assert kind == EXTENDED
    rows = [event("a", customer_id="cu1", customer_age=42, risk_score=0.5), event("b", customer_age="42")]
    result = check(kind, columns_of(rows, kind.schema.names), np.arange(1, 3))
    assert result.valid.column("customer_id").to_pylist() == ["cu1"]
    assert [(r["row"], r["field"]) for r in result.rejected.to_pylist()] == [(2, "customer_age")]


@pytest.mark.parametrize(
    "connection",
    [
        "localhost:6379",
        "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
        "redis.internal:6380,ssl=true,password=s3cr:et,db=2",
        "h:1,socket_timeout=0.5,username=fraud",
    ],
)
def test_connection_strings_parse_as_feast_parses_them(connection: str) -> None:
    """Parsed without importing Feast (seconds of start-up for `stream produce`), the same as Feast's own parser."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    from core.connections import parse_connection_string

    assert parse_connection_string(connection) == RedisOnlineStore._parse_connection_string(connection)
