"""Input that breaks SPEC's event rules is rejected naming the row and the field, or quarantined and counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.settings import OfflineLayout
from pipelines.events import LABELS, TRANSACTIONS
from pipelines.offline.backfill import InvalidEvents, backfill
from pipelines.offline.inputs import read_batches
from pipelines.validation import SchemaError, check
from tests.features_harness import T0, iso, label, txn, write_jsonl


def rejected_fields(rows: list[dict]) -> list[tuple[int, str]]:  # type: ignore[type-arg]
    columns = {name: [r.get(name) for r in rows] for name in TRANSACTIONS.schema.names}
    result = check(TRANSACTIONS, columns, np.arange(1, len(rows) + 1))
    return [(r["row"], r["field"]) for r in result.rejected.to_pylist()]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("transaction_id", ""),
        ("transaction_id", "x" * 65),
        ("transaction_id", None),
        ("transaction_id", 17),
        ("card_id", None),
        ("merchant_id", ""),
        ("device_id", ""),
        ("ip_address", 12),
        ("amount", -0.01),
        ("amount", float("nan")),
        ("amount", float("inf")),
        ("amount", "12.50"),
        ("amount", True),
        ("amount", None),
        ("currency", "usd"),
        ("currency", "US"),
        ("merchant_category", "541"),
        ("merchant_category", 5411),
        ("country", "USA"),
        ("event_timestamp", "2026-11-01T12:00:00"),  # no zone
        ("event_timestamp", "2026-13-01T12:00:00Z"),  # no such month
        ("event_timestamp", "yesterday"),
        ("event_timestamp", 1.5e12),  # a float is not epoch milliseconds
        ("event_timestamp", 1_762_000_000),  # epoch seconds, not milliseconds: year 1970
        ("event_timestamp", None),
    ],
)
def test_each_rule_names_the_row_and_the_field(field: str, value: object) -> None:
    good = txn("ok", T0)
    bad = {**txn("bad", T0), field: value}
    assert rejected_fields([good, good | {"transaction_id": "ok2"}, bad]) == [(3, field)]


def test_valid_variants_are_accepted() -> None:
    rows = [
        txn("a", T0, device=None, ip=None),
        {**txn("b", T0), "event_timestamp": T0},  # epoch milliseconds
        {**txn("c", T0), "event_timestamp": "2026-11-01T13:00:00.123456+01:00"},  # offset, microseconds
        {**txn("d", T0), "amount": 0},
    ]
    columns = {name: [r.get(name) for r in rows] for name in TRANSACTIONS.schema.names}
    result = check(TRANSACTIONS, columns, np.arange(1, 5))
    assert result.rejected.num_rows == 0
    times = result.valid.column("event_timestamp").cast(pa.int64()).to_pylist()
    assert times == [T0, T0, 1_793_534_400_123, T0]  # stored as UTC milliseconds


def test_parquet_column_of_the_wrong_type_is_a_schema_error(tmp_path: Path) -> None:
    table = pa.table({"transaction_id": ["a"], "amount": ["12.0"]})
    with pytest.raises(SchemaError, match="column 'amount' is string, expected a number"):
        check(TRANSACTIONS, {n: table.column(n).combine_chunks() for n in table.column_names}, np.array([1]))


def test_label_rules() -> None:
    rows = [
        label("a", T0),
        {**label("b", T0), "is_fraud": "yes"},
        {**label("c", T0), "label_timestamp": "soon"},
    ]
    columns = {name: [r.get(name) for r in rows] for name in LABELS.schema.names}
    result = check(LABELS, columns, np.arange(1, 4))
    assert [(r["row"], r["field"]) for r in result.rejected.to_pylist()] == [
        (2, "is_fraud"),
        (3, "label_timestamp"),
    ]
    assert result.valid.column("transaction_id").to_pylist() == ["a"]


def test_backfill_rejects_invalid_input_and_writes_nothing(tmp_path: Path) -> None:
    rows = [txn("a", T0), {**txn("b", T0), "amount": -5}, txn("c", T0)]
    path = write_jsonl(tmp_path / "tx.jsonl", rows)
    layout = OfflineLayout(tmp_path / "offline")
    with pytest.raises(InvalidEvents) as caught:
        backfill(path, None, layout)
    message = str(caught.value)
    assert "row 2: amount required finite number >= 0 (got -5)" in message
    assert "--quarantine" in message
    assert not layout.file("card_features").exists()


def test_backfill_quarantines_invalid_rows_with_their_reason(tmp_path: Path) -> None:
    lines = [
        json.dumps(txn("a", T0)),
        "{not json",
        json.dumps({**txn("b", T0), "country": "usa"}),
        "",
        json.dumps(txn("a", T0 + 1)),
        json.dumps([1, 2]),
        json.dumps(txn("c", T0 + 5)),
    ]
    path = tmp_path / "tx.jsonl"
    path.write_text("\n".join(lines) + "\n")
    layout = OfflineLayout(tmp_path / "offline")
    summary = backfill(path, None, layout, on_invalid="quarantine")
    assert summary.transactions.read == 6  # the blank line is not a row
    assert summary.transactions.valid == 2
    assert summary.transactions.rejected == 4
    assert summary.quarantine is not None
    quarantined = pq.read_table(summary.quarantine).to_pylist()
    by_line = {r["row"]: (r["field"], r["reason"]) for r in quarantined}
    assert by_line[2][0] == "(line)" and "not valid JSON" in by_line[2][1]
    assert by_line[3][0] == "country"
    assert by_line[5] == ("transaction_id", "duplicate transaction_id (first seen at row 1)")
    assert by_line[6] == ("(line)", "line is not a JSON object")
    ids = pq.read_table(layout.transactions_file).column("transaction_id").to_pylist()
    assert sorted(ids) == ["a", "c"]
    # the kept "a" is the first occurrence, not the duplicate one millisecond later
    times = pq.read_table(layout.transactions_file).column("event_time_ms").to_pylist()
    assert sorted(times) == [T0, T0 + 5]


def test_parquet_and_jsonl_inputs_give_identical_features(tmp_path: Path) -> None:
    rows = [txn(f"t{i}", T0 + i * 60_000, card=f"c{i % 4}", amount=i * 1.25) for i in range(50)]
    jsonl = write_jsonl(tmp_path / "tx.jsonl", rows)
    parquet_rows = [{**r, "event_timestamp": T0 + i * 60_000} for i, r in enumerate(rows)]
    table = pa.Table.from_pylist(parquet_rows)
    table = table.set_column(
        table.schema.get_field_index("event_timestamp"),
        "event_timestamp",
        table.column("event_timestamp").cast(pa.timestamp("ms", tz="UTC")),
    )
    parquet = tmp_path / "tx.parquet"
    pq.write_table(table, parquet)
    a = OfflineLayout(tmp_path / "a")
    b = OfflineLayout(tmp_path / "b")
    backfill(jsonl, None, a)
    backfill(parquet, None, b)
    key = ["card_id", "event_timestamp"]
    left = pq.read_table(a.file("card_features")).to_pandas().sort_values(key).reset_index(drop=True)
    right = pq.read_table(b.file("card_features")).to_pandas().sort_values(key).reset_index(drop=True)
    assert len(left) == 50 and left.equals(right)
    assert iso(T0) == "2025-11-01T12:26:40.000Z"


def test_naive_parquet_timestamps_are_taken_as_utc(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([{**txn("a", T0), "event_timestamp": None}])
    naive = pa.array([T0 * 1_000_000 + 999_999], pa.int64()).cast(pa.timestamp("ns"))  # sub-ms digits: truncated
    table = table.set_column(9, "event_timestamp", naive)
    path = tmp_path / "naive.parquet"
    pq.write_table(table, path)
    (batch,) = read_batches(path, TRANSACTIONS.schema.names)
    result = check(TRANSACTIONS, batch.columns, batch.rows)
    assert result.rejected.num_rows == 0
    assert result.valid.column("event_timestamp").cast(pa.int64()).to_pylist() == [T0]
