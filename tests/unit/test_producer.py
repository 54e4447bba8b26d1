"""The producer: the same events, rules, dead letters and stream entries as the per-row path it replaced, faster.

The JSONL reader, the typing fast paths of the validation and the column-wise encoding are each compared with the
plain per-row code on random and hostile inputs; `Producer` runs against a fake Redis client here (a real Redis in
tests/integration/test_producer.py)."""

from __future__ import annotations

import json
import math
import random
import string
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipelines.events import LABELS, TRANSACTIONS, EventKind, with_extra_fields
from pipelines.offline.inputs import read_batches
from pipelines.stream.log import DEAD_LETTER, EVENTS, partition_keys, partition_of
from pipelines.stream.producer import (
    STATS,
    Producer,
    declared_transaction_kind,
    encode_events,
    normalized,
)
from pipelines.validation import Checked, check
from tests.producer_reference import per_line_batches
from tests.user_repo import user_repo

T0 = 1_793_232_004_409
EXTRA = with_extra_fields({"customer_id": "string", "loyalty_points": "int64", "risk_score": "float64"})


def event(transaction_id: str = "t1", **fields: Any) -> dict[str, Any]:
    return {
        "transaction_id": transaction_id,
        "card_id": "c1",
        "merchant_id": "m1",
        "device_id": "d1",
        "ip_address": "1.1.1.1",
        "amount": 10.5,
        "currency": "USD",
        "merchant_category": "5411",
        "country": "US",
        "event_timestamp": "2026-11-01T12:00:00.123Z",
        **fields,
    }


# ---------------------------------------------------------------------------------------------------- the reader
HOSTILE_LINES = [
    b'{"a": 1, "b": "x"}', b'{"a":2}', b"", b"   ", b"\t", b"{oops", b"[1]", b"3", b"null", b'"s"', b"}", b"{",
    b'{"a": 1} {"b": 2}', b'{"a": [{}', b"{}]}", b' {"a": 5}', b'{"a": 6}  ', b'{"a": 7}\r', b'\xef\xbb\xbf{"a": 8}',
    b'{"a": "\xff"}', b'{"a": "\\ud800"}', b'{"a": NaN, "b": Infinity}', b'{"a": 1e400}', b'{"a": "\xc3\xa9"}',
    b'{"a": 1, "a": 2}', b'{"a":\t1}', b'{"a": "p\tq"}', b'{"a": {"b": [1, 2, {"c": null}]}}', b'{"a": true}',
    b'{"a": 1}\x00', b"{\x00}", b'\x0c{"a": 1}', b'{"a": 1}\x0b', b'{"b": -0.0, "c": 12345678901234567890}',
]  # fmt: skip


def test_the_jsonl_reader_reads_every_line_as_json_loads_does(tmp_path: Path) -> None:
    """Blank lines, invalid JSON, non-objects, whitespace, BOM, bad UTF-8, two objects on a line, one object over
    two lines: the same records, line numbers and reasons as the per-line reader, in batches of any size."""
    rng = random.Random(7)
    path = tmp_path / "events.jsonl"
    for _ in range(400):
        lines = [rng.choice(HOSTILE_LINES) for _ in range(rng.randint(0, 40))]
        path.write_bytes(b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b""))
        batch_rows = rng.choice([1, 3, 1000])
        fast = [(b.rows.tolist(), b.columns, b.unreadable) for b in read_batches(path, ["a", "b", "c"], batch_rows)]
        expected = [(n.tolist(), c, r) for n, c, r in per_line_batches(path, ["a", "b", "c"], batch_rows)]
        assert json.dumps(fast, default=str) == json.dumps(expected, default=str), path.read_bytes()


# --------------------------------------------------------------------------------------------- the typing paths
VALUES: list[Any] = [
    None, "x", "", "USD", "5411", "US", "2026-11-01T12:00:00Z", "2026-11-01T12:00:00.123456789+01:00", "not a time",
    "é", 0, 1, -3, 10**20, 2**62 + 1, 2**53 + 1, T0, 1.5, -0.0, float("nan"), float("inf"), True, False, [1], {"a": 1},
]  # fmt: skip


class Odd:
    """A value of no JSON type: forces every column through the value-by-value typing."""

    def __repr__(self) -> str:
        return "odd"


def comparable(checked: Checked) -> str:
    return json.dumps(
        {"valid": checked.valid.to_pylist(), "rejected": checked.rejected.to_pylist()}, default=str, sort_keys=True
    )


@pytest.mark.parametrize("kind", [TRANSACTIONS, LABELS, EXTRA], ids=["transactions", "labels", "extra"])
def test_typing_whole_columns_at_once_changes_no_verdict(kind: EventKind) -> None:
    """Columns of one JSON type go to Arrow at once; mixed ones value by value. The same valid rows and the same
    rejections (field, reason, value as written) either way: a column forced through the slow path by an odd value
    in an extra last row gives the same answer for every other row."""
    rng = random.Random(3)
    fields = kind.schema.names
    for _ in range(300):
        n = rng.randint(1, 12)
        base = event() if kind is not LABELS else {"transaction_id": "t", "is_fraud": True, "label_timestamp": T0}
        rows = [dict(base) for _ in range(n)]
        for row in rows:
            for name in rng.sample(fields, rng.randint(0, 2)):
                row[name] = rng.choice(VALUES)
            if kind is EXTRA:
                row.update(customer_id=rng.choice(["c", None, 3]), loyalty_points=rng.choice([1, None, 1.0, True]))
                row["risk_score"] = rng.choice([0.5, 2, None, "x", float("nan")])
        columns = {f: [r.get(f) for r in rows] for f in fields}
        fast = check(kind, columns, np.arange(1, n + 1))
        slow = check(kind, {f: [*values, Odd()] for f, values in columns.items()}, np.arange(1, n + 2))
        assert all(row["row"] == n + 1 for row in slow.rejected.to_pylist()[-1:])
        trimmed = Checked(slow.valid, slow.rejected.slice(0, slow.rejected.num_rows - 1), slow.valid_rows)
        assert comparable(fast) == comparable(trimmed), rows


# -------------------------------------------------------------------------------------------------- the encoding
def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(string.printable + 'é"\\\u2028\U0001f600%') for _ in range(rng.randint(1, 12)))


@pytest.mark.parametrize("kind", [TRANSACTIONS, LABELS, EXTRA], ids=["transactions", "labels", "extra"])
def test_entries_are_the_text_json_dumps_writes(kind: EventKind) -> None:
    """Column-wise encoding gives, byte for byte, `json.dumps(event, separators=(",", ":"))` of each event as the
    worker reads it (text escaped to ASCII, floats by repr, nulls, booleans, `ts_ms` last)."""
    rng = random.Random(5)
    for _ in range(50):
        n = rng.randint(0, 20)
        columns: dict[str, list[Any]] = {}
        for field in kind.schema:
            if pa.types.is_timestamp(field.type):
                columns[field.name] = [T0 + rng.randint(-(10**9), 10**9) for _ in range(n)]
            elif pa.types.is_string(field.type):
                columns[field.name] = [random_text(rng) if rng.random() < 0.8 else None for _ in range(n)]
            elif pa.types.is_floating(field.type):
                columns[field.name] = [
                    rng.choice([0.1, 1e16, 1e-7, 25.21, 3.0, -0.0, rng.random() * 1e6]) for _ in range(n)
                ]
            elif pa.types.is_integer(field.type):
                columns[field.name] = [rng.choice([0, -1, 2**62, None]) for _ in range(n)]
            else:
                columns[field.name] = [rng.random() < 0.5 for _ in range(n)]
        table = pa.table({f.name: pa.array(columns[f.name], f.type) for f in kind.schema}, schema=kind.schema)
        expected = [json.dumps(e, separators=(",", ":")) for e in normalized(kind, table)]
        assert encode_events(kind, table) == expected


def test_non_finite_floats_are_written_as_json_dumps_writes_them() -> None:
    kind = with_extra_fields({"score": "float64"})
    columns = {**{k: [v] * 3 for k, v in event().items()}, "event_timestamp": [T0] * 3}
    columns["score"] = [math.nan, -math.inf, 1.0]
    table = pa.table({f.name: pa.array(columns[f.name], f.type) for f in kind.schema}, schema=kind.schema)
    expected = [json.dumps(e, separators=(",", ":")) for e in normalized(kind, table)]
    assert encode_events(kind, table) == expected
    assert '"score":NaN' in expected[0]


# ------------------------------------------------------------------------------------------ Producer (fake Redis)
class FakePipeline:
    def __init__(self, client: FakeRedis) -> None:
        self.client = client
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    def xadd(self, stream: str, fields: dict[str, str]) -> None:
        self.commands.append(("XADD", stream, "*", *[x for kv in fields.items() for x in kv]))

    def execute(self) -> None:
        for command in self.commands:
            assert command[0] == "XADD" and command[2] == "*"
            pairs = command[3:]
            self.client.streams.setdefault(command[1], []).append(dict(zip(pairs[::2], pairs[1::2], strict=True)))


class FakeRedis:
    """The few commands the producer sends: XADD (through a pipeline) and HINCRBY."""

    def __init__(self) -> None:
        self.streams: dict[str, list[dict[str, str]]] = {}
        self.hashes: dict[str, dict[str, int]] = {}

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self)

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self.hashes.setdefault(key, {}).setdefault(field, 0)
        self.hashes[key][field] += amount


def test_a_producer_appends_valid_events_and_returns_why_the_others_are_not() -> None:
    client = FakeRedis()
    producer = Producer(client, transactions=TRANSACTIONS, source="checkout")  # type: ignore[arg-type]
    sent = producer.send_transactions(
        [event("t1"), event("t2", amount=-3), "not an event", event("t3", event_timestamp=T0), event("t4", card_id=7)]  # type: ignore[list-item]
    )
    assert sent.appended == 2 and not sent.ok
    errors = [(e.index, e.field, e.value) for e in sent.errors]
    assert errors == [(1, "amount", "-3"), (2, "(event)", None), (4, "card_id", "7")]
    assert "finite number >= 0" in sent.errors[0].reason and sent.errors[1].reason == "event is not an object"
    entries = client.streams[EVENTS]
    assert [json.loads(e["event"])["transaction_id"] for e in entries] == ["t1", "t3"]
    assert all(e["kind"] == "transaction" for e in entries)
    as_read = {k: v for k, v in event("t1").items() if k != "event_timestamp"} | {"ts_ms": 1_793_534_400_123}
    assert json.loads(entries[0]["event"]) == as_read
    assert json.loads(entries[1]["event"])["ts_ms"] == T0
    dead = client.streams[DEAD_LETTER]
    assert [(d["source"], d["index"], d["field"]) for d in dead] == [
        ("checkout", "1", "amount"),
        ("checkout", "2", "(event)"),
        ("checkout", "4", "card_id"),
    ]
    assert json.loads(dead[0]["event"]) == event("t2", amount=-3) and dead[0]["kind"] == "transaction"
    assert json.loads(dead[1]["event"]) == "not an event"
    assert client.hashes[STATS] == {"dead_letter": 3}


def test_a_producer_sends_labels_and_one_event_at_a_time() -> None:
    client = FakeRedis()
    producer = Producer(client, transactions=TRANSACTIONS)  # type: ignore[arg-type]
    assert producer.send_labels([{"transaction_id": "t1", "is_fraud": True, "label_timestamp": T0}]).ok
    assert producer.send_labels([{"transaction_id": "t1", "is_fraud": 1, "label_timestamp": T0}]).errors[0].field == (
        "is_fraud"
    )
    assert producer.send_transactions([event("t9")]).appended == 1
    assert producer.send_transactions([]).appended == 0
    assert [e["kind"] for e in client.streams[EVENTS]] == ["label", "transaction"]
    assert json.loads(client.streams[EVENTS][0]["event"]) == {"transaction_id": "t1", "is_fraud": True, "ts_ms": T0}


def test_a_producer_spreads_events_over_partitions_as_the_workers_expect() -> None:
    client = FakeRedis()
    producer = Producer(client, transactions=TRANSACTIONS, partitions=4)  # type: ignore[arg-type]
    events = [event(f"t{i}", card_id=f"c{i % 9}") for i in range(60)]
    assert producer.send_transactions(events).appended == 60
    keys = partition_keys(EVENTS, 4)
    for index, key in enumerate(keys):
        got = [json.loads(e["event"])["transaction_id"] for e in client.streams.get(key, [])]
        assert got == [e["transaction_id"] for e in events if partition_of("transaction", e, 4) == index]
    producer.send_labels([{"transaction_id": f"t{i}", "is_fraud": False, "label_timestamp": T0} for i in range(20)])
    for index, key in enumerate(keys):
        labels = [json.loads(e["event"]) for e in client.streams.get(key, []) if e["kind"] == "label"]
        assert all(partition_of("label", label, 4) == index for label in labels)


def test_the_producer_counts_dead_letters_where_the_worker_reports_them() -> None:
    from pipelines.stream import worker

    assert STATS == worker.STATS
    assert not hasattr(worker, "produce")


# ---------------------------------------------------------------------------------------------- declared fields
def test_the_declared_fields_are_read_once_per_version_of_the_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.features import catalog

    repo = user_repo(tmp_path / "feature_repo")
    home = tmp_path / "home"
    kind = declared_transaction_kind(home, repo)
    assert kind.schema.names[-2:] == ["customer_id", "loyalty_points"]

    def no_feast(*args: object) -> None:
        raise AssertionError("the repo was read again")

    monkeypatch.setattr(catalog, "load_catalog", no_feast)
    assert declared_transaction_kind(home, repo) == kind  # remembered
    (repo / "definitions.py").write_text((repo / "definitions.py").read_text() + "\n# changed\n")
    with pytest.raises(AssertionError, match="read again"):
        declared_transaction_kind(home, repo)
    monkeypatch.undo()
    assert declared_transaction_kind(home, repo) == kind
    monkeypatch.setenv("FRAUDSERVE_SOMETHING", "else")  # another run's settings: read again
    monkeypatch.setattr(catalog, "load_catalog", no_feast)
    with pytest.raises(AssertionError, match="read again"):
        declared_transaction_kind(home, repo)


def test_a_producer_without_a_target_says_how_to_give_one() -> None:
    with pytest.raises(ValueError, match=r"Redis client .* or kafka=KafkaConfig"):
        Producer(transactions=TRANSACTIONS)
