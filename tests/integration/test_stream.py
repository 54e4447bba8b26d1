"""The stream worker produces, online, exactly the offline pipeline's values: real Redis, workers as processes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from core.settings import Settings
from fraudserve import feature_store
from pipelines.generate import GenerateConfig, generate
from pipelines.offline.backfill import backfill
from pipelines.stream.log import DEAD_LETTER
from tests.parity import entity_mismatches
from tests.redis_cluster import RedisCluster
from tests.redis_process import RedisProcess


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Path]]]:
    root = tmp_path_factory.mktemp("stream")
    home = root / "home"
    generated = generate(
        root / "raw", GenerateConfig(seed=17, cards=150, days=6, end=datetime(2026, 11, 1, tzinfo=UTC))
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FRAUDSERVE_HOME", str(home))
        settings = Settings()
        feature_store.apply(settings, feature_store.OFFLINE_ONLY)
        backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
    yield home, generated.files


def env_for(home: Path, server: RedisProcess | RedisCluster, **extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    environment.update(
        {"FRAUDSERVE_HOME": str(home), "FRAUDSERVE_REDIS": server.connection_string, "COLUMNS": "200", **extra}
    )
    return environment


def cli(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fraudserve", *args], env=environment, capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip


def assert_parity(home: Path, server: RedisProcess | RedisCluster, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(home))
    if isinstance(server, RedisCluster):
        monkeypatch.setenv("FRAUDSERVE_REDIS_TYPE", "redis_cluster")
    settings = Settings()
    store = feature_store.open_store(settings, server.connection_string)
    compared, mismatches = entity_mismatches(store, settings.offline, rel=1e-9)
    assert mismatches[:10] == []
    return compared


def jsonl_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(300)
def test_two_workers_reach_offline_parity_even_with_every_event_twice(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, files = offline
    environment = env_for(home, redis_server)
    for _ in range(2):  # every event delivered twice
        produced = cli(environment, "stream", "produce", "--file", str(files["transactions_jsonl"]))
        assert produced.returncode == 0, produced.stderr
        assert cli(environment, "stream", "produce", "--file", str(files["labels_jsonl"]), "--labels").returncode == 0
    run = cli(environment, "stream", "run", "--workers", "2", "--until-idle", "2")
    assert run.returncode == 0, run.stderr
    assert assert_parity(home, redis_server, monkeypatch) > 1000
    status = cli(environment, "stream", "status")
    assert "lag" in status.stdout and "freshness_p99_ms" in status.stdout
    processed_row = next(line for line in status.stdout.splitlines() if " processed " in f" {line} ")
    assert int(processed_row.split()[-2].replace(",", "")) >= 2 * len(jsonl_lines(files["transactions_jsonl"]))


def test_worker_serves_its_own_prometheus_metrics(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess
) -> None:
    import httpx

    from core.embedded_redis import free_port

    home, files = offline
    port = free_port()
    environment = env_for(home, redis_server, FRAUDSERVE_STREAM_METRICS_PORT=str(port))
    assert cli(environment, "stream", "produce", "--file", str(files["transactions_jsonl"])).returncode == 0
    worker = subprocess.Popen([sys.executable, "-m", "fraudserve", "stream", "run"], env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        expected = float(len(jsonl_lines(files["transactions_jsonl"])))
        done = f'fraudserve_stream_events_total{{kind="transaction"}} {expected}'
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and done not in text:
            time.sleep(0.5)
            with contextlib.suppress(httpx.HTTPError):
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
        time.sleep(1.5)  # one idle read later the lag gauge is refreshed
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
        assert done in text
        assert "fraudserve_stream_freshness_seconds_count" in text and "fraudserve_stream_lag 0.0" in text
    finally:
        worker.terminate()
        worker.wait()


@pytest.mark.timeout(300)
def test_out_of_order_within_the_lateness_is_exact(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, files = offline
    rnd = random.Random(5)
    lines = jsonl_lines(files["transactions_jsonl"])

    def jittered(line: str) -> float:
        moment = datetime.fromisoformat(json.loads(line)["event_timestamp"]).timestamp()
        return moment + rnd.uniform(0, 240)  # up to 4 minutes out of order, inside the 5-minute lateness

    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join(sorted(lines, key=jittered)) + "\n")
    assert jsonl_lines(shuffled) != lines
    environment = env_for(home, redis_server)
    assert cli(environment, "stream", "produce", "--file", str(shuffled)).returncode == 0
    assert cli(environment, "stream", "produce", "--file", str(files["labels_jsonl"]), "--labels").returncode == 0
    assert cli(environment, "stream", "run", "--until-idle", "2").returncode == 0
    assert_parity(home, redis_server, monkeypatch)


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_stream_loses_nothing(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, files = offline
    environment = env_for(home, redis_server, FRAUDSERVE_STREAM_CLAIM_IDLE_MS="1500")
    assert cli(environment, "stream", "produce", "--file", str(files["transactions_jsonl"])).returncode == 0
    assert cli(environment, "stream", "produce", "--file", str(files["labels_jsonl"]), "--labels").returncode == 0
    victim = subprocess.Popen(
        [sys.executable, "-m", "fraudserve", "stream", "run"], env=environment, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client: Any = redis.Redis(port=redis_server.port)
    deadline = time.monotonic() + 60
    while int(client.hget("fraudserve:stream:stats", "processed") or 0) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its process group, mid-stream
    victim.wait()
    processed = int(client.hget("fraudserve:stream:stats", "processed") or 0)
    assert 0 < processed < len(jsonl_lines(files["transactions_jsonl"]))
    replacement = cli(environment, "stream", "run", "--until-idle", "3")
    assert replacement.returncode == 0, replacement.stderr
    assert assert_parity(home, redis_server, monkeypatch) > 1000


def test_invalid_events_go_to_the_dead_letter_stream_with_their_reason(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, tmp_path: Path
) -> None:
    home, files = offline
    good = jsonl_lines(files["transactions_jsonl"])[0]
    bad_amount = json.dumps({**json.loads(good), "transaction_id": "bad-1", "amount": -3})
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join([good, bad_amount, "{oops"]) + "\n")
    produced = cli(env_for(home, redis_server), "stream", "produce", "--file", str(events))
    assert produced.returncode == 0, produced.stderr
    assert "appended 1 events; 2 invalid to the dead-letter stream" in produced.stdout
    dead: Any = redis.Redis(port=redis_server.port).xrange(DEAD_LETTER)
    reasons = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in dead]
    assert reasons[0]["field"] == "amount" and "finite number >= 0" in reasons[0]["reason"]
    assert reasons[0]["value"] == "-3" and reasons[0]["row"] == "2"
    assert reasons[1]["field"] == "(line)" and "not valid JSON" in reasons[1]["reason"]


def test_events_later_than_the_lateness_are_reported(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, tmp_path: Path
) -> None:
    home, files = offline
    lines = jsonl_lines(files["transactions_jsonl"])
    newest, oldest = json.loads(lines[-1]), json.loads(lines[0])
    events = tmp_path / "late.jsonl"
    events.write_text(json.dumps(newest) + "\n" + json.dumps(oldest) + "\n")  # the oldest arrives days late
    environment = env_for(home, redis_server)
    assert cli(environment, "stream", "produce", "--file", str(events)).returncode == 0
    client: Any = redis.Redis(port=redis_server.port)
    # one event per batch, in order, so the watermark moves before the late one arrives
    from pipelines.stream.worker import Worker

    worker = Worker(client, "fraudserve", "t", timedelta(minutes=5), batch=1, max_batch=1)
    assert worker.run(until_idle_s=0.2) == 2
    assert int(client.hget("fraudserve:stream:stats", "late") or 0) == 1
    assert "late" in cli(environment, "stream", "status").stdout


@pytest.mark.timeout(300)
def test_a_dead_worker_process_is_replaced_and_its_events_claimed(
    offline: tuple[Path, dict[str, Path]], redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    from pipelines.stream.log import RedisStreamLog

    home, files = offline
    environment = env_for(home, redis_server, FRAUDSERVE_STREAM_CLAIM_IDLE_MS="1500")
    assert cli(environment, "stream", "produce", "--file", str(files["transactions_jsonl"])).returncode == 0
    assert cli(environment, "stream", "produce", "--file", str(files["labels_jsonl"]), "--labels").returncode == 0
    total = len(jsonl_lines(files["transactions_jsonl"])) + len(jsonl_lines(files["labels_jsonl"]))
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "fraudserve", "stream", "run", "--workers", "2"], env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client: Any = redis.Redis(port=redis_server.port)
    stream = RedisStreamLog(client)

    def workers() -> list[psutil.Process]:
        found = []
        for child in psutil.Process(supervisor.pid).children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append(child)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):  # the killed worker, not reaped yet
                continue
        return found

    def processed() -> int:
        return int(client.hget("fraudserve:stream:stats", "processed") or 0)

    try:
        deadline = time.monotonic() + 60
        while processed() < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = workers()
        assert len(first) == 2
        first[0].kill()  # SIGKILL: no clean-up, what it had read stays pending
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            figures = stream.lag()
            if processed() >= total and figures["lag"] == 0 and figures["pending"] == 0:
                break
            time.sleep(0.2)
        # The supervisor looks every 0.5 s and a replacement starts in its own time: wait for it (a loaded machine).
        deadline = time.monotonic() + 20
        now = workers()
        while len(now) != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            now = workers()
        replaced = len(now) == 2 and first[0].pid not in {c.pid for c in now}
    finally:
        supervisor.terminate()
        output, _ = supervisor.communicate(timeout=30)
    assert replaced, (now, output)
    assert "died (exit code -9); replaced by" in output, output
    assert output.count(" died (exit code ") == 1, output  # only the killed one: no other worker died
    _, alive = psutil.wait_procs(now, timeout=10)
    assert alive == [], "a terminated `stream run` must stop its workers, not orphan them"
    assert assert_parity(home, redis_server, monkeypatch) > 1000


@pytest.mark.timeout(400)
def test_on_a_redis_cluster_with_four_partitions_two_workers_reach_offline_parity(
    offline: tuple[Path, dict[str, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three masters: entity histories, versions, Feast rows, the stream and the stats spread over the nodes."""
    home, files = offline
    with RedisCluster(tmp_path / "cluster") as cluster:
        environment = env_for(home, cluster, FRAUDSERVE_REDIS_TYPE="redis_cluster", FRAUDSERVE_STREAM_PARTITIONS="4")
        for _ in range(2):  # every event delivered twice
            produced = cli(environment, "stream", "produce", "--file", str(files["transactions_jsonl"]))
            assert produced.returncode == 0, produced.stderr
            labels = cli(environment, "stream", "produce", "--file", str(files["labels_jsonl"]), "--labels")
            assert labels.returncode == 0, labels.stderr
        run = cli(environment, "stream", "run", "--workers", "2", "--until-idle", "2")
        assert run.returncode == 0, run.stderr
        assert assert_parity(home, cluster, monkeypatch) > 1000
        keys = cluster.dbsize()
        assert len(keys) == 3 and min(keys.values()) > 100, keys  # really spread over the three masters
        cluster_client: Any = cluster.client()
        partitions: list[int] = [cluster_client.xlen(f"fraudserve:events:{{{p}}}") for p in range(4)]
        assert min(partitions) > 0 and sum(partitions) == 2 * (
            len(jsonl_lines(files["transactions_jsonl"])) + len(jsonl_lines(files["labels_jsonl"]))
        )
        status = cli(environment, "stream", "status")
        assert status.returncode == 0, status.stderr
        processed_row = next(line for line in status.stdout.splitlines() if " processed " in f" {line} ")
        assert int(processed_row.split()[-2].replace(",", "")) >= 2 * len(jsonl_lines(files["transactions_jsonl"]))


def test_a_batch_is_acknowledged_only_after_its_own_writes(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails leaves its batch pending (claimed again), and the batch written before it acknowledged."""
    from pipelines.stream.log import RedisStreamLog
    from pipelines.stream.worker import STATS, Worker

    client: Any = redis.Redis(port=redis_server.port)
    stream = RedisStreamLog(client)
    start = 1_790_000_000_000
    stream.append("transaction", [
        {"transaction_id": f"t{i}", "card_id": "c1", "merchant_id": "m1", "device_id": None, "ip_address": None,
         "amount": 10.0 + i, "currency": "USD", "merchant_category": "5411", "country": "US", "ts_ms": start + i}
        for i in range(6)
    ])  # fmt: skip
    worker = Worker(client, "fraudserve", "w", timedelta(minutes=5), batch=2, max_batch=2)
    written: list[list[str]] = []
    write = worker.updater.write

    def failing_second(batch: Any) -> Any:
        if written:
            raise RuntimeError("the second batch's write failed")
        written.append(sorted(key for _, key in batch.pending))
        return write(batch)

    monkeypatch.setattr(worker.updater, "write", failing_second)
    with pytest.raises(RuntimeError, match="second batch"):
        worker.run(until_idle_s=0.2)
    assert written == [["c1", "m1"]]
    assert int(client.hget(STATS, "processed")) == 2
    pending = client.xpending_range("fraudserve:events", "fraudserve-features", "-", "+", 10)
    appended = [entry_id for entry_id, _ in client.xrange("fraudserve:events")]
    assert [p["message_id"] for p in pending] == appended[2:4]  # the failed batch; the third was never read
    assert stream.lag()["lag"] == 2
