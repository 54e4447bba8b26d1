"""The stream on Apache Kafka: a real broker (KRaft, jars from Maven Central, tests/kafka_process.py), real Redis,
workers as processes; online values equal to the offline backfill's, as on Redis Streams (test_stream.py)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from core.settings import PROJECT_ROOT
from tests.integration.test_stream import assert_parity, cli, env_for, jsonl_lines, offline
from tests.kafka_process import KafkaProcess
from tests.redis_process import RedisProcess

pytestmark = pytest.mark.kafka
__all__ = ["offline"]  # the module's backfill, shared with test_stream's fixture


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaProcess]:
    """One broker for the module; each test has topics and a consumer group of its own."""
    broker = KafkaProcess(tmp_path_factory.mktemp("kafka")).start()
    try:
        yield broker
    finally:
        broker.stop()


def kafka_env(
    home: Path, server: RedisProcess, kafka: KafkaProcess, partitions: int = 3, **extra: str
) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return env_for(
        home, server, FRAUDSERVE_KAFKA_BOOTSTRAP=kafka.bootstrap, FRAUDSERVE_STREAM_PARTITIONS=str(partitions),
        FRAUDSERVE_KAFKA_TRANSACTIONS_TOPIC=f"tx-{run}", FRAUDSERVE_KAFKA_LABELS_TOPIC=f"labels-{run}",
        FRAUDSERVE_KAFKA_DEAD_LETTER_TOPIC=f"dead-{run}", FRAUDSERVE_KAFKA_GROUP=f"group-{run}",
        FRAUDSERVE_KAFKA_SESSION_TIMEOUT_MS="3000", **extra,
    )  # fmt: skip


def config_of(environment: dict[str, str]) -> Any:
    from pipelines.stream.kafka_log import KafkaConfig

    return KafkaConfig(
        environment["FRAUDSERVE_KAFKA_BOOTSTRAP"], environment["FRAUDSERVE_KAFKA_TRANSACTIONS_TOPIC"],
        environment["FRAUDSERVE_KAFKA_LABELS_TOPIC"], environment["FRAUDSERVE_KAFKA_DEAD_LETTER_TOPIC"],
        group=environment["FRAUDSERVE_KAFKA_GROUP"],
    )  # fmt: skip


def produce(environment: dict[str, str], path: Path, *flags: str) -> str:
    produced = cli(environment, "stream", "produce", "--file", str(path), "--kafka", *flags)
    assert produced.returncode == 0, produced.stderr
    return produced.stdout


def table_rows(text: str) -> list[list[str]]:
    """The cells of each row of the tables rich printed."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in text.splitlines() if "│" in line]


def disordered(lines: list[str], seed: int) -> list[str]:
    """Up to 4 minutes out of event-time order (inside the 5-minute lateness)."""
    rnd = random.Random(seed)

    def jittered(line: str) -> float:
        return datetime.fromisoformat(json.loads(line)["event_timestamp"]).timestamp() + rnd.uniform(0, 240)

    return sorted(lines, key=jittered)


@pytest.mark.timeout(400)
def test_three_partitions_two_workers_reach_offline_parity_with_disorder_and_duplicates(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, kafka: KafkaProcess, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    home, files = offline
    environment = kafka_env(home, redis_server, kafka)
    lines = jsonl_lines(files["transactions_jsonl"])
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(disordered(lines, 5)) + "\n")
    for _ in range(2):  # every event delivered twice
        assert "appended" in produce(environment, events)
        produce(environment, files["labels_jsonl"], "--labels")
    run = cli(environment, "stream", "run", "--workers", "2", "--until-idle", "3")
    assert run.returncode == 0, run.stderr
    assert "Kafka" in run.stderr + run.stdout
    assert assert_parity(home, redis_server, monkeypatch) > 1000

    status = cli(environment, "stream", "status")
    assert status.returncode == 0, status.stderr
    tx = environment["FRAUDSERVE_KAFKA_TRANSACTIONS_TOPIC"]
    partitions = [
        row
        for row in table_rows(status.stdout)
        if len(row) == 5 and row[0] in (tx, environment["FRAUDSERVE_KAFKA_LABELS_TOPIC"])
    ]
    # one row per partition of each topic, every event committed (lag 0), each partition holding some cards' events
    assert len(partitions) == 6, status.stdout
    assert all(row[4] == "0" and row[2] == row[3] for row in partitions), status.stdout
    assert sum(int(row[2]) for row in partitions if row[0] == tx) == 2 * len(lines)
    assert all(int(row[2]) > 0 for row in partitions if row[0] == tx)


@pytest.mark.timeout(400)
def test_a_worker_killed_mid_stream_loses_nothing_and_its_partitions_move(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, kafka: KafkaProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from pipelines.stream.kafka_log import KafkaLog

    home, files = offline
    environment = kafka_env(home, redis_server, kafka, partitions=4)
    produce(environment, files["transactions_jsonl"])
    produce(environment, files["labels_jsonl"], "--labels")

    def worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "fraudserve", "stream", "run"], env=environment, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    client: Any = redis.Redis(port=redis_server.port)
    victim, survivor = worker(), worker()
    try:
        deadline = time.monotonic() + 120
        while int(client.hget("fraudserve:stream:stats", "processed") or 0) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGKILL)  # mid-stream: what it read and did not commit is read again
        victim.wait()
        processed = int(client.hget("fraudserve:stream:stats", "processed") or 0)
        total = len(jsonl_lines(files["transactions_jsonl"])) + len(jsonl_lines(files["labels_jsonl"]))
        assert 0 < processed < total
        log = KafkaLog(config_of(environment))
        deadline = time.monotonic() + 180
        rows = log.partition_lag()
        while time.monotonic() < deadline and (sum(r["lag"] for r in rows) or survivor.poll() is not None):
            time.sleep(0.5)
            rows = log.partition_lag()
        assert survivor.poll() is None, "the surviving worker must still be running"
        # every partition of both topics committed to its end: the victim's partitions moved to the survivor
        assert [r for r in rows if r["lag"]] == [] and all(r["committed"] == r["end"] for r in rows if r["end"])
    finally:
        for process in (victim, survivor):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
    assert assert_parity(home, redis_server, monkeypatch) > 1000


def test_invalid_events_go_to_the_dead_letter_topic_with_row_field_and_reason(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, kafka: KafkaProcess, tmp_path: Path
) -> None:
    from confluent_kafka import Producer

    from pipelines.stream.kafka_log import read_dead_letters

    home, files = offline
    environment = kafka_env(home, redis_server, kafka, partitions=1)
    config = config_of(environment)
    good = jsonl_lines(files["transactions_jsonl"])[0]
    bad_amount = json.dumps({**json.loads(good), "transaction_id": "bad-1", "amount": -3})
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([good, bad_amount, "{oops"]) + "\n")
    produced = produce(environment, events)
    assert "appended 1 events" in produced and "2 invalid to the dead-letter topic" in produced
    # another team's producer writes straight to the topic: the worker validates every message
    raw = Producer({"bootstrap.servers": kafka.bootstrap})
    raw.produce(config.transactions_topic, b"not json", b"c1")
    raw.produce(config.transactions_topic, json.dumps({**json.loads(good), "currency": "euro"}).encode(), b"c1")
    raw.flush(10)
    run = cli(environment, "stream", "run", "--until-idle", "2")
    assert run.returncode == 0, run.stderr

    dead = read_dead_letters(config)
    from_file = [d for d in dead if d.get("file")]
    assert from_file[0]["field"] == "amount" and "finite number >= 0" in from_file[0]["reason"]
    assert from_file[0]["value"] == "-3" and from_file[0]["row"] == 2
    assert from_file[1]["field"] == "(line)" and "not valid JSON" in from_file[1]["reason"]
    from_topic = [d for d in dead if d.get("topic")]
    assert [d["field"] for d in from_topic] == ["(message)", "currency"]
    assert from_topic[0]["row"] == f"{config.transactions_topic}[0]@1" and "not valid JSON" in from_topic[0]["reason"]
    assert from_topic[1]["offset"] == 2 and from_topic[1]["value"] == '"euro"'
    status = cli(environment, "stream", "status")
    assert status.returncode == 0, status.stderr
    dead_row = next(line for line in status.stdout.splitlines() if " dead_letter " in f" {line} ")
    assert dead_row.split()[-2] == "4"
    assert int(redis.Redis(port=redis_server.port).hget("fraudserve:stream:stats", "processed") or 0) == 1


@pytest.mark.timeout(300)
def test_a_feast_kafka_source_in_the_repo_is_consumed_with_its_servers_and_topic(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, kafka: KafkaProcess, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The transaction events declared as Feast's KafkaSource (JsonFormat): no FRAUDSERVE_KAFKA_BOOTSTRAP and no
    topic variable at all. The workers read the repo's topic and the default label topic on its brokers, and the
    monitoring report's label copy finds that label topic the same way."""
    from core.settings import Settings
    from pipelines import label_log

    home, files = offline
    topic = f"payments-{uuid.uuid4().hex[:8]}"
    repo = tmp_path / "feature_repo"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    definitions = (repo / "definitions.py").read_text()
    push = definitions[definitions.index("transactions_source = PushSource(") :]
    push = push[: push.index("\n)\n") + 3]
    kafka_source = (
        "transactions_source = KafkaSource(\n"
        '    name="transactions",\n'
        '    timestamp_field="event_timestamp",\n'
        '    message_format=JsonFormat(schema_json=""),\n'
        f'    kafka_bootstrap_servers="{kafka.bootstrap}",\n'
        f'    topic="{topic}",\n' + push[push.index("    batch_source=") :]
    )
    definitions = definitions.replace(push, kafka_source)
    definitions = "from feast import KafkaSource\nfrom feast.data_format import JsonFormat\n" + definitions
    definitions = definitions.replace("from __future__ import annotations\n", "")
    (repo / "definitions.py").write_text("from __future__ import annotations\n\n" + definitions)
    group = f"group-{uuid.uuid4().hex[:8]}"
    # the module's other tests name topics of their own: the default label and dead-letter topics are this test's
    environment = env_for(home, redis_server, FRAUDSERVE_FEATURE_REPO=str(repo), FRAUDSERVE_KAFKA_GROUP=group)
    assert not any(name.startswith("FRAUDSERVE_KAFKA_") and name.endswith("TOPIC") for name in environment)
    assert f"to the Kafka topic {topic}" in produce(environment, files["transactions_jsonl"])
    labels = produce(environment, files["labels_jsonl"], "--labels")
    appended = re.search(r"appended ([\d,]+) events to the Kafka topic fraudserve.labels", labels)
    assert appended is not None, labels
    run = cli(environment, "stream", "run", "--until-idle", "2")
    assert run.returncode == 0, run.stderr
    assert f"Kafka {kafka.bootstrap}" in run.stderr + run.stdout
    assert assert_parity(home, redis_server, monkeypatch) > 1000

    for name in [n for n in os.environ if n.startswith("FRAUDSERVE_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        if name.startswith("FRAUDSERVE_"):
            monkeypatch.setenv(name, value)
    copied = label_log.copy_label_stream(Settings())
    assert copied["copied"] == int(appended.group(1).replace(",", "")) > 0, copied
    assert "Kafka topic fraudserve.labels" in copied["note"], copied


@pytest.mark.timeout(400)
def test_a_broker_restart_mid_stream_loses_nothing(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, kafka: KafkaProcess, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The broker killed (SIGKILL) and started again on the same port and log, twice: the workers wait, reconnect and
    go on from the committed offsets; none of them dies, and the values are exactly the backfill's.

    The workers' output goes to a file, not a pipe read at the end: while the broker is away every client logs each
    connection attempt, and a pipe nobody drains fills up (64 KiB) and blocks every thread that logs, the client's
    own included: the workers would stop, not because of Kafka."""
    from pipelines.stream.kafka_log import KafkaLog, KafkaUnavailable

    home, files = offline
    environment = kafka_env(home, redis_server, kafka)
    produce(environment, files["transactions_jsonl"])
    produce(environment, files["labels_jsonl"], "--labels")
    output_file = tmp_path / "workers.log"
    with output_file.open("w") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "fraudserve", "stream", "run", "--workers", "2"], env=environment, text=True,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    client: Any = redis.Redis(port=redis_server.port)
    try:
        deadline = time.monotonic() + 120
        while int(client.hget("fraudserve:stream:stats", "processed") or 0) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(2):  # twice: the second outage comes while the workers catch up on the first
            kafka.kill()
            time.sleep(3)
            kafka.start()
            time.sleep(1.5)
        log = KafkaLog(config_of(environment))
        deadline = time.monotonic() + 180
        lag = -1
        while time.monotonic() < deadline and lag != 0:
            time.sleep(0.5)
            try:
                lag = sum(r["lag"] for r in log.partition_lag(timeout_s=2))
            except KafkaUnavailable:
                continue
        running = supervisor.poll() is None
    finally:
        supervisor.terminate()
        supervisor.wait(timeout=60)
    output = output_file.read_text()
    assert lag == 0 and running, output[-20_000:]
    # No worker may die, not even one the supervisor replaced: the SIGSEGV / SIGABRT once seen here (librdkafka's
    # admin client asked for the group's offsets while the broker was away, `KafkaLog._group_committed`) fails it.
    deaths = re.findall(r"stream worker \S+ died \(exit code (-?\d+)\); replaced", output)
    assert not deaths, output[-20_000:]
    assert assert_parity(home, redis_server, monkeypatch) > 1000


def card_events(cards: int, per_card: int, start_ms: int, seed: int) -> list[dict[str, Any]]:
    """Valid transactions of `cards` cards, one a minute per card, disordered by up to 4 minutes (within the
    5-minute lateness): none of them is late in any partition."""
    rnd = random.Random(seed)
    events = [
        {"transaction_id": f"t{card}-{n}", "card_id": f"c{card}", "merchant_id": f"m{n % 7}", "device_id": None,
         "ip_address": None, "amount": float(n % 50), "currency": "EUR", "merchant_category": "5411",
         "country": "FR", "event_timestamp": start_ms + n * 60_000 + card * 7}
        for n in range(per_card)
        for card in range(cards)
    ]  # fmt: skip
    return sorted(events, key=lambda e: e["event_timestamp"] + rnd.uniform(0, 240_000))


def read_all(log: Any, expected: int, batch: int = 200, deadline_s: float = 60) -> list[Any]:
    """Read (and commit) until `expected` events have come, as a worker does."""
    entries: list[Any] = []
    deadline = time.monotonic() + deadline_s
    while len(entries) < expected and time.monotonic() < deadline:
        read = log.read("test", batch, block_ms=500)
        entries += read
        log.ack(read)
    return entries


@pytest.mark.timeout(120)
def test_a_service_producer_writes_to_kafka_keyed_by_card_in_order(kafka: KafkaProcess) -> None:
    """`Producer(kafka=...)`: each valid event one message keyed by its card (labels by transaction), a card's
    events in one partition in the order sent; invalid ones to the dead-letter topic and back in `errors`."""
    from confluent_kafka import Consumer, TopicPartition

    from pipelines.events import TRANSACTIONS
    from pipelines.stream.kafka_log import KafkaConfig, read_dead_letters
    from pipelines.stream.producer import Producer

    run = uuid.uuid4().hex[:8]
    config = KafkaConfig(kafka.bootstrap, f"tx-{run}", f"labels-{run}", f"dead-{run}", group=f"g-{run}", partitions=3)
    events = card_events(cards=12, per_card=20, start_ms=1_793_534_400_000, seed=3)
    with Producer(transactions=TRANSACTIONS, source="checkout", kafka=config) as producer:
        sent = [producer.send_transactions(events[i : i + 25]) for i in range(0, len(events), 25)]
        bad = producer.send_transactions([{**events[0], "transaction_id": "bad", "currency": "euro"}, "oops"])  # type: ignore[list-item]
        label = {"transaction_id": "t1-0", "is_fraud": True, "label_timestamp": "2026-11-02T00:00:00Z"}
        labels = producer.send_labels([label])
    assert sum(s.appended for s in sent) == len(events) and all(s.ok for s in sent) and labels.ok
    assert bad.appended == 0 and [(e.index, e.field) for e in bad.errors] == [(0, "currency"), (1, "(event)")]

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"reader-{run}"})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(config.transactions_topic, p))[1] for p in range(3)}
        assert sum(ends.values()) == len(events) and all(ends.values())  # spread over the 3 partitions
        consumer.assign([TopicPartition(config.transactions_topic, p, 0) for p in range(3)])
        # consume(n, timeout) waits until n messages or the timeout: short timeouts, until all have come
        deadline = time.monotonic() + 30
        messages: list[Any] = []
        while len(messages) < len(events) and time.monotonic() < deadline:
            messages += [m for m in consumer.consume(500, timeout=0.2) if m.error() is None]
        consumer.assign([TopicPartition(config.labels_topic, p, 0) for p in range(3)])
        label_messages: list[Any] = []
        while not label_messages and time.monotonic() < deadline:
            label_messages += [m for m in consumer.consume(10, timeout=0.2) if m.error() is None]
    finally:
        consumer.close()
    partition_of_card: dict[str, int] = {}
    by_card: dict[str, list[str]] = {}
    for message in messages:
        event = json.loads(message.value())
        assert message.key().decode() == event["card_id"]
        assert partition_of_card.setdefault(event["card_id"], message.partition()) == message.partition()
        by_card.setdefault(event["card_id"], []).append(event["transaction_id"])
        # the SPEC event as any producer writes it: its fields, the time in epoch milliseconds
        assert set(event) == set(TRANSACTIONS.schema.names) and isinstance(event["event_timestamp"], int)
    for card, ids in by_card.items():
        assert ids == [e["transaction_id"] for e in events if e["card_id"] == card]  # the order sent
    (label,) = label_messages
    assert label.key() == b"t1-0" and json.loads(label.value())["label_timestamp"] == 1_793_577_600_000
    dead = sorted(read_dead_letters(config), key=lambda d: int(d["index"]))  # unkeyed: any partition, any order
    assert [(d["source"], d["index"], d["field"]) for d in dead] == [
        ("checkout", 0, "currency"),
        ("checkout", 1, "(event)"),
    ]
    assert json.loads(dead[0]["event"])["transaction_id"] == "bad"


@pytest.mark.timeout(120)
def test_lateness_is_measured_per_partition_and_carried_by_the_commits(kafka: KafkaProcess) -> None:
    """Events disordered within the lateness are not late in any partition, however far one partition is read
    ahead of the others; events older than the lateness are, counted once each, also by the partition's next
    owner (the stream time goes with the committed offsets)."""
    from pipelines.events import TRANSACTIONS
    from pipelines.stream.kafka_log import KafkaConfig, KafkaLog
    from pipelines.stream.producer import Producer

    run = uuid.uuid4().hex[:8]
    config = KafkaConfig(kafka.bootstrap, f"tx-{run}", f"labels-{run}", f"dead-{run}", group=f"g-{run}", partitions=3)
    lateness_ms = 5 * 60_000
    start = 1_793_534_400_000
    events = card_events(cards=40, per_card=120, start_ms=start, seed=11)
    with Producer(transactions=TRANSACTIONS, kafka=config) as producer:
        assert producer.send_transactions(events).ok
    first = KafkaLog(config, TRANSACTIONS)
    try:
        entries = read_all(first, len(events))
        assert len(entries) == len(events)
        assert first.late(entries, lateness_ms) == 0
        assert max(e.behind_ms for e in entries) > 60_000  # disordered, within the lateness
        # an idle worker's lag check: asked beside the consumer, whose connection waits on its fetch (nine requests
        # behind a 500 ms long-poll each took 4.5 s before)
        started = time.monotonic()
        assert first.lag() == {"lag": 0, "pending": 0, "length": len(events)}
        assert time.monotonic() - started < 2
    finally:
        first.close()  # leaves the group: its partitions go to the next reader with their commits
    # 3 events of 3 cards 10 minutes older than their cards' newest, 2 only 4 minutes older: 3 late
    newest = {f"c{i}": max(e["event_timestamp"] for e in events if e["card_id"] == f"c{i}") for i in range(5)}
    stragglers = [
        {**events[0], "transaction_id": f"late-{i}", "card_id": f"c{i}",
         "event_timestamp": newest[f"c{i}"] - minutes * 60_000}
        for i, minutes in enumerate([10, 10, 10, 4, 4])
    ]  # fmt: skip
    with Producer(transactions=TRANSACTIONS, kafka=config) as producer:
        assert producer.send_transactions(stragglers).ok
    second = KafkaLog(config, TRANSACTIONS)
    try:
        entries = read_all(second, len(stragglers))
        assert sorted(e.event["transaction_id"] for e in entries) == sorted(s["transaction_id"] for s in stragglers)
        assert second.late(entries, lateness_ms) == 3
    finally:
        second.close()


@pytest.mark.timeout(120)
def test_a_backlog_is_read_one_partition_a_batch_and_held_messages_are_not_committed(kafka: KafkaProcess) -> None:
    """Under a backlog a read is one partition's run of events (the updater's cost is per entity state a batch
    touches: a batch mixing partitions touched twice the cards per event); what was consumed past that run is held
    for the next read, every event comes once in its partition's order, and a commit never covers a held event."""
    from pipelines.events import TRANSACTIONS
    from pipelines.stream.kafka_log import KafkaConfig, KafkaEntry, KafkaLog
    from pipelines.stream.producer import Producer

    run = uuid.uuid4().hex[:8]
    config = KafkaConfig(kafka.bootstrap, f"tx-{run}", f"labels-{run}", f"dead-{run}", group=f"g-{run}", partitions=3)
    events = card_events(cards=60, per_card=100, start_ms=1_793_534_400_000, seed=17)
    with Producer(transactions=TRANSACTIONS, kafka=config) as producer:
        assert producer.send_transactions(events).ok
    reader = KafkaLog(config, TRANSACTIONS)
    count = 1200  # each partition holds about 2,000: a read of 1,200 meets the end of a partition's run
    batches: list[list[KafkaEntry]] = []
    applied: dict[int, int] = {}  # partition -> next offset after the events returned so far
    try:
        deadline = time.monotonic() + 60
        while sum(len(b) for b in batches) < len(events) and time.monotonic() < deadline:
            read = [e for e in reader.read("test", count, block_ms=500) if isinstance(e, KafkaEntry)]
            if not read:
                continue
            batches.append(read)
            for entry in read:
                applied[entry.partition] = entry.offset + 1
            reader.ack(read)
            reader.commit()  # synchronous: the broker has what `ack` sent once it returns
            committed = {
                r["partition"]: r["committed"]
                for r in reader.partition_lag()
                if r["topic"] == config.transactions_topic
            }
            assert committed == {p: applied.get(p, -1) for p in range(3)}, (committed, applied)
    finally:
        reader.close()
    entries = [e for b in batches for e in b]
    assert sorted(e.event["transaction_id"] for e in entries) == sorted(e["transaction_id"] for e in events)
    for partition in range(3):  # each partition's events once each, in offset order
        offsets = [e.offset for e in entries if e.partition == partition]
        assert offsets == list(range(len(offsets))) and offsets
    # (partition, events) of each batch, in order: a batch holds several partitions only when the first one's run
    # was under half the read (a partition's tail: a read that short would bring the worker back to small reads)
    runs = [
        [(p, sum(1 for e in b if e.partition == p)) for p in dict.fromkeys(e.partition for e in b)] for b in batches
    ]
    assert all(len(r) == 1 or r[0][1] * 2 < count for r in runs), runs
    assert sum(len(r) == 1 for r in runs) >= len(runs) - 2, runs
    assert any(len(r) == 1 and r[0][1] < count for r in runs[:-1]), runs  # a read cut at its partition's end


@pytest.mark.timeout(120)
def test_sasl_credentials_come_from_the_settings_and_wrong_ones_are_named(
    kafka: KafkaProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's SASL_PLAINTEXT listener (PLAIN): FRAUDSERVE_KAFKA_* settings reach every client (producer,
    admin, consumer); wrong credentials fail at once with the settings to check, not after the outage wait."""
    from core.settings import Settings
    from pipelines.events import TRANSACTIONS
    from pipelines.stream.kafka_log import KafkaLog, KafkaUnavailable, kafka_config
    from pipelines.stream.producer import Producer

    run = uuid.uuid4().hex[:8]
    for name, value in {
        "BOOTSTRAP": kafka.sasl_bootstrap, "TRANSACTIONS_TOPIC": f"tx-{run}", "LABELS_TOPIC": f"labels-{run}",
        "DEAD_LETTER_TOPIC": f"dead-{run}", "GROUP": f"g-{run}", "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SASL_MECHANISM": "PLAIN", "SASL_USERNAME": kafka.SASL_USER, "SASL_PASSWORD": kafka.SASL_PASSWORD,
    }.items():  # fmt: skip
        monkeypatch.setenv(f"FRAUDSERVE_KAFKA_{name}", value)
    config = kafka_config(Settings())
    assert config is not None and config.security["sasl.username"] == kafka.SASL_USER
    events = card_events(cards=3, per_card=10, start_ms=1_793_534_400_000, seed=5)
    with Producer(transactions=TRANSACTIONS, kafka=config) as producer:
        assert producer.send_transactions(events).appended == len(events)
    log = KafkaLog(config, TRANSACTIONS)
    try:
        read = read_all(log, len(events))
    finally:
        log.close()
    assert sorted(e.event["transaction_id"] for e in read) == sorted(e["transaction_id"] for e in events)

    monkeypatch.setenv("FRAUDSERVE_KAFKA_SASL_PASSWORD", "not-the-password")
    wrong = kafka_config(Settings())
    assert wrong is not None
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=r"refused this client's credentials.*FRAUDSERVE_KAFKA_SASL_PASSWORD"):
        KafkaLog(wrong).ensure_group()
    assert time.monotonic() - started < 30


@pytest.mark.timeout(120)
def test_tls_listener_with_the_ca_from_the_settings_and_an_untrusted_one_named(
    kafka: KafkaProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's SSL listener (a self-signed certificate for 127.0.0.1): with its certificate as
    FRAUDSERVE_KAFKA_SSL_CA_LOCATION every client (admin, producer, consumer) talks TLS to it; without it the
    handshake fails at once, naming the TLS settings to check, not after the outage wait."""
    from core.settings import Settings
    from pipelines.events import TRANSACTIONS
    from pipelines.stream.kafka_log import KafkaLog, KafkaUnavailable, kafka_config
    from pipelines.stream.producer import Producer

    run = uuid.uuid4().hex[:8]
    for name, value in {
        "BOOTSTRAP": kafka.ssl_bootstrap, "TRANSACTIONS_TOPIC": f"tx-{run}", "LABELS_TOPIC": f"labels-{run}",
        "DEAD_LETTER_TOPIC": f"dead-{run}", "GROUP": f"g-{run}", "SECURITY_PROTOCOL": "SSL",
        "SSL_CA_LOCATION": str(kafka.ca_file),
    }.items():  # fmt: skip
        monkeypatch.setenv(f"FRAUDSERVE_KAFKA_{name}", value)
    config = kafka_config(Settings())
    assert config is not None and config.security == {"security.protocol": "SSL", "ssl.ca.location": str(kafka.ca_file)}
    events = card_events(cards=3, per_card=10, start_ms=1_793_534_400_000, seed=7)
    with Producer(transactions=TRANSACTIONS, kafka=config) as producer:
        assert producer.send_transactions(events).appended == len(events)
    log = KafkaLog(config, TRANSACTIONS)
    try:
        read = read_all(log, len(events))
    finally:
        log.close()
    assert sorted(e.event["transaction_id"] for e in read) == sorted(e["transaction_id"] for e in events)

    monkeypatch.delenv("FRAUDSERVE_KAFKA_SSL_CA_LOCATION")  # the system's CAs do not trust the broker's certificate
    untrusted = kafka_config(Settings())
    assert untrusted is not None
    started = time.monotonic()
    with pytest.raises(KafkaUnavailable, match=r"TLS handshake.*failed.*FRAUDSERVE_KAFKA_SSL_CA_LOCATION"):
        KafkaLog(untrusted).ensure_group()
    assert time.monotonic() - started < 30


@pytest.mark.timeout(120)
def test_labels_of_the_kafka_label_topic_are_copied_for_the_report_once_each(
    kafka: KafkaProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`monitor report`'s label copy on Kafka (FRAUDSERVE_KAFKA_BOOTSTRAP): the label topic's valid labels, from
    any producer, into the label files; a second copy takes only what came since (a checkpoint per partition)."""
    from confluent_kafka import Producer as RawProducer

    from core.settings import Settings
    from pipelines import label_log
    from pipelines.events import TRANSACTIONS
    from pipelines.stream.kafka_log import kafka_config
    from pipelines.stream.producer import Producer

    run = uuid.uuid4().hex[:8]
    for name, value in {
        "BOOTSTRAP": kafka.bootstrap, "TRANSACTIONS_TOPIC": f"tx-{run}", "LABELS_TOPIC": f"labels-{run}",
        "DEAD_LETTER_TOPIC": f"dead-{run}", "GROUP": f"g-{run}",
    }.items():  # fmt: skip
        monkeypatch.setenv(f"FRAUDSERVE_KAFKA_{name}", value)
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FRAUDSERVE_STREAM_PARTITIONS", "3")
    settings = Settings()
    config = kafka_config(settings)
    assert config is not None
    labels = [
        {"transaction_id": f"t{i}", "is_fraud": i % 3 == 0, "label_timestamp": 1_793_534_400_000 + i * 1000}
        for i in range(30)
    ]
    with Producer(transactions=TRANSACTIONS, kafka=config) as producer:
        assert producer.send_labels(labels).appended == 30
    raw = RawProducer({"bootstrap.servers": kafka.bootstrap})  # another team's producer: RFC 3339, and an invalid one
    raw.produce(config.labels_topic, json.dumps({"transaction_id": "t-other", "is_fraud": True,
                "label_timestamp": "2026-11-03T10:00:00Z"}).encode(), b"t-other")  # fmt: skip
    raw.produce(config.labels_topic, b"not json", b"t-bad")
    raw.flush(10)

    first = label_log.copy_label_stream(settings)
    assert first["copied"] == 31, first
    copied = label_log.read(label_log.label_log_dir(settings.home_dir))
    assert sorted(copied["transaction_id"]) == sorted([*(f"t{i}" for i in range(30)), "t-other"])
    other = copied[copied["transaction_id"] == "t-other"].iloc[0]
    assert bool(other["is_fraud"]) and other["label_timestamp"].isoformat() == "2026-11-03T10:00:00+00:00"
    assert copied[copied["transaction_id"] == "t3"]["is_fraud"].item()

    with Producer(transactions=TRANSACTIONS, kafka=config) as producer:
        producer.send_labels([{"transaction_id": "t-late", "is_fraud": True, "label_timestamp": 1_793_600_000_000}])
    second = label_log.copy_label_stream(settings)
    assert second["copied"] == 1 and "Kafka topic" in second["note"], second
    assert len(label_log.read(label_log.label_log_dir(settings.home_dir))) == 32


@pytest.mark.timeout(120)
def test_the_consumer_group_protocol_reads_commits_and_sets_the_groups_session_timeout(kafka: KafkaProcess) -> None:
    """FRAUDSERVE_KAFKA_GROUP_PROTOCOL=consumer (KIP-848): the broker assigns the partitions, the worker reads and
    commits as with the classic protocol, and the group's session timeout and heartbeat are the settings' (group
    configs on the broker, since the client may not send them); a protocol that does not exist is named."""
    import dataclasses

    from confluent_kafka import ConsumerGroupType
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

    from pipelines.events import TRANSACTIONS
    from pipelines.stream.kafka_log import KafkaConfig, KafkaLog
    from pipelines.stream.producer import Producer

    run = uuid.uuid4().hex[:8]
    config = KafkaConfig(
        kafka.bootstrap, f"tx-{run}", f"labels-{run}", f"dead-{run}", group=f"g-{run}", partitions=3,
        session_timeout_ms=3000, group_protocol="consumer",
    )  # fmt: skip
    events = card_events(cards=10, per_card=20, start_ms=1_793_534_400_000, seed=5)
    with Producer(transactions=TRANSACTIONS, kafka=config) as producer:
        assert producer.send_transactions(events).ok
    log = KafkaLog(config, TRANSACTIONS)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    try:
        log.ensure_group()
        entries = read_all(log, len(events))
        assert sorted(e.event["transaction_id"] for e in entries) == sorted(e["transaction_id"] for e in events)
        assert log.lag() == {"lag": 0, "pending": 0, "length": len(events)}
        group = admin.describe_consumer_groups([config.group])[config.group].result()
        assert group.type == ConsumerGroupType.CONSUMER
        assert sorted(tp.partition for m in group.members for tp in m.assignment.topic_partitions
                      if tp.topic == config.transactions_topic) == [0, 1, 2]  # fmt: skip
        resource = ConfigResource(ResourceType.GROUP, config.group)
        described = admin.describe_configs([resource])[resource].result()
        assert described["consumer.session.timeout.ms"].value == "3000"
        assert described["consumer.heartbeat.interval.ms"].value == str(log.heartbeat_ms)
    finally:
        log.close()
    with pytest.raises(ValueError, match="FRAUDSERVE_KAFKA_GROUP_PROTOCOL is 'eager': use classic or consumer"):
        KafkaLog(dataclasses.replace(config, group_protocol="eager")).consumer("test")
