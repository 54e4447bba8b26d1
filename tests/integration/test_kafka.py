"""The stream on Apache Kafka: a real broker (KRaft, jars from Maven Central, tests/kafka_process.py), real Redis,
workers as processes; online values equal to the offline backfill's, as on Redis Streams (test_stream.py)."""

from __future__ import annotations

import json
import os
import random
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
    """The transaction events declared as Feast's KafkaSource (JsonFormat): no FRAUDSERVE_KAFKA_BOOTSTRAP at all."""
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
    environment = env_for(
        home, redis_server, FRAUDSERVE_FEATURE_REPO=str(repo), FRAUDSERVE_KAFKA_GROUP=group,
        FRAUDSERVE_KAFKA_LABELS_TOPIC=f"{topic}-labels", FRAUDSERVE_KAFKA_DEAD_LETTER_TOPIC=f"{topic}-dead",
    )  # fmt: skip
    assert f"to the Kafka topic {topic}" in produce(environment, files["transactions_jsonl"])
    produce(environment, files["labels_jsonl"], "--labels")
    run = cli(environment, "stream", "run", "--until-idle", "2")
    assert run.returncode == 0, run.stderr
    assert f"Kafka {kafka.bootstrap}" in run.stderr + run.stdout
    assert assert_parity(home, redis_server, monkeypatch) > 1000


@pytest.mark.timeout(400)
@pytest.mark.xfail(
    reason="known flaky (issue 22): after a broker restart the consumers of a two-worker group sometimes never fetch "
    "again; the stalled-consumer replacement does not always recover within the test's time",
    strict=False,
)
def test_a_broker_restart_mid_stream_loses_nothing(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, kafka: KafkaProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The broker killed (SIGKILL) and started again on the same port and log: the workers wait, reconnect and go on
    from the committed offsets; none of them dies, and the values are exactly the backfill's."""
    from pipelines.stream.kafka_log import KafkaLog, KafkaUnavailable

    home, files = offline
    environment = kafka_env(home, redis_server, kafka)
    produce(environment, files["transactions_jsonl"])
    produce(environment, files["labels_jsonl"], "--labels")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "fraudserve", "stream", "run", "--workers", "2"], env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client: Any = redis.Redis(port=redis_server.port)
    try:
        deadline = time.monotonic() + 120
        while int(client.hget("fraudserve:stream:stats", "processed") or 0) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        kafka.kill()
        time.sleep(3)
        kafka.start()
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
        output, _ = supervisor.communicate(timeout=60)
    assert lag == 0 and running, output
    assert "died" not in output, output
    assert assert_parity(home, redis_server, monkeypatch) > 1000
