"""The producer against a real redis-server: a JSONL file with invalid lines, its entries read back as the worker
reads them, the dead letters, partitions, the CLI, and a service's `Producer`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from pipelines.events import LABELS, TRANSACTIONS, EventKind
from pipelines.generate import GenerateConfig, generate
from pipelines.stream import log
from pipelines.stream.log import DEAD_LETTER, EVENTS, RedisStreamLog, partition_keys, partition_of
from pipelines.stream.producer import STATS, Producer, normalized, produce
from pipelines.validation import check
from tests.redis_process import RedisProcess


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("producer")
    config = GenerateConfig(seed=23, cards=1000, days=3, end=datetime(2026, 11, 1, tzinfo=UTC))
    return generate(root / "raw", config).files


def expected_entries(kind: EventKind, lines: list[bytes]) -> list[str]:
    """The entries the per-row path wrote: each valid line parsed on its own, checked, as JSON of the worker's dict."""
    records = [json.loads(line) for line in lines]
    columns = {name: [r.get(name) for r in records] for name in kind.schema.names}
    valid = check(kind, columns, np.arange(1, len(records) + 1)).valid
    return [json.dumps(event, separators=(",", ":")) for event in normalized(kind, valid)]


def stream_entries(client: Any, key: str = EVENTS) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(key)]


def test_a_jsonl_file_with_invalid_lines(
    generated: dict[str, Path], redis_server: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every valid line becomes the entry the per-row path wrote, in order, over several batches and pipelined
    chunks; each invalid line goes to the dead-letter stream with its line number, field, reason and value."""
    monkeypatch.setattr(log, "APPEND_CHUNK", 700)  # several round trips per batch
    good = generated["transactions_jsonl"].read_bytes().splitlines()
    assert len(good) > 3000
    first = json.loads(good[0])
    bad = {
        5: json.dumps({**first, "transaction_id": "bad-amount", "amount": -3}).encode(),
        6: b"{oops",
        7: b"",  # blank: skipped, keeps its number
        1200: b"[1, 2]",
        2500: json.dumps({**first, "transaction_id": "bad-card", "card_id": 42}).encode(),
        2501: json.dumps({**first, "transaction_id": "bad-time", "event_timestamp": "yesterday"}).encode(),
    }
    lines = list(good)
    for number in sorted(bad):
        lines.insert(number - 1, bad[number])
    lines[100] = lines[100] + b"\r"  # a CRLF line is read as json.loads reads it
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    client: Any = redis_server.client()

    counts = produce(client, path, TRANSACTIONS, batch_rows=1000)

    assert counts == {"appended": len(good), "dead_letter": 5}
    entries = stream_entries(client)
    assert {e["kind"] for e in entries} == {"transaction"}
    assert [e["event"] for e in entries] == expected_entries(TRANSACTIONS, good)
    dead = stream_entries(client, DEAD_LETTER)
    assert [(d["row"], d["field"]) for d in dead] == [
        ("5", "amount"),
        ("6", "(line)"),
        ("1200", "(line)"),
        ("2500", "card_id"),
        ("2501", "event_timestamp"),
    ]
    assert all(d["kind"] == "transaction" and d["file"] == str(path) for d in dead)
    assert "finite number >= 0" in dead[0]["reason"] and dead[0]["value"] == "-3"
    assert "not valid JSON" in dead[1]["reason"] and dead[1]["value"] == "null"
    assert dead[2]["reason"] == "line is not a JSON object"
    assert dead[3]["value"] == "42" and dead[4]["value"] == '"yesterday"'
    assert int(client.hget(STATS, "dead_letter")) == 5

    # The worker's side: its consumer group reads these entries back as the events it expects.
    stream = RedisStreamLog(client)
    stream.ensure_group()
    read = stream.read("reader", count=len(good) + 10, block_ms=100)
    assert [e.event for e in read] == [json.loads(text) for text in expected_entries(TRANSACTIONS, good)]
    assert all(e.kind == "transaction" and e.appended_ms > 0 for e in read)


def test_labels_and_partitions(generated: dict[str, Path], redis_server: RedisProcess) -> None:
    """With partitions, each event lands on the stream key the workers expect, in the file's order per key."""
    client: Any = redis_server.client()
    transactions = generated["transactions_jsonl"].read_bytes().splitlines()
    labels = generated["labels_jsonl"].read_bytes().splitlines()
    assert produce(client, generated["transactions_jsonl"], TRANSACTIONS, partitions=3)["appended"] == len(transactions)
    assert produce(client, generated["labels_jsonl"], LABELS, partitions=3) == {
        "appended": len(labels),
        "dead_letter": 0,
    }
    expected = [(TRANSACTIONS, text) for text in expected_entries(TRANSACTIONS, transactions)]
    expected += [(LABELS, text) for text in expected_entries(LABELS, labels)]
    for index, key in enumerate(partition_keys(EVENTS, 3)):
        mine = [(k.name, text) for k, text in expected if partition_of(k.name, json.loads(text), 3) == index]
        assert [(e["kind"], e["event"]) for e in stream_entries(client, key)] == mine
    assert not client.exists(EVENTS)


def test_the_cli_produces_and_reads_the_repo_once(
    generated: dict[str, Path], redis_server: RedisProcess, tmp_path: Path
) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    environment.update({"FRAUDSERVE_HOME": str(tmp_path / "home"), "FRAUDSERVE_REDIS": redis_server.connection_string})
    events = tmp_path / "events.jsonl"
    events.write_bytes(generated["transactions_jsonl"].read_bytes() + b'{"transaction_id": "x"}\n')
    for _ in range(2):  # the second run reads the declared fields from the home
        produced = subprocess.run(
            [sys.executable, "-m", "fraudserve", "stream", "produce", "--file", str(events)],
            env=environment, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert produced.returncode == 0, produced.stderr
        count = len(generated["transactions_jsonl"].read_bytes().splitlines())
        assert f"appended {count:,} events; 1 invalid to the dead-letter stream" in produced.stdout
    assert (tmp_path / "home" / "cache" / "transaction-fields.json").exists()
    assert redis_server.client().xlen(EVENTS) == 2 * count


def test_a_service_producer_on_a_real_redis(redis_server: RedisProcess) -> None:
    """One event at a time: appended as the worker reads it; a Redis error is raised and leaves the client usable."""
    client: Any = redis_server.client()
    producer = Producer(client, transactions=TRANSACTIONS, source="checkout")
    event = {
        "transaction_id": "t1", "card_id": "c1", "merchant_id": "m1", "device_id": None, "ip_address": "10.0.0.1",
        "amount": 12, "currency": "EUR", "merchant_category": "5411", "country": "FR",
        "event_timestamp": "2026-11-01T12:00:00+01:00",
    }  # fmt: skip
    sent = producer.send_transactions([event, {**event, "currency": "euro"}])
    assert sent.appended == 1 and [(e.index, e.field) for e in sent.errors] == [(1, "currency")]
    (entry,) = stream_entries(client)
    assert json.loads(entry["event"]) == {
        **{k: v for k, v in event.items() if k != "event_timestamp"},
        "amount": 12.0,
        "ts_ms": 1_793_530_800_000,
    }
    (dead,) = stream_entries(client, DEAD_LETTER)
    assert dead["source"] == "checkout" and json.loads(dead["event"])["currency"] == "euro"

    client.delete(EVENTS)
    client.set(EVENTS, "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        producer.send_transactions([event, event])
    assert client.ping()
    client.delete(EVENTS)
    assert producer.send_transactions([event]).appended == 1
    assert client.xlen(EVENTS) == 1
