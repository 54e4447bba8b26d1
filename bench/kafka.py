"""The stream's two transports in the same run: events/s drained through Apache Kafka against Redis Streams, and
freshness at a fixed offered rate through each.

    python -m bench.kafka [--cards 3000 --days 2 --partitions 4 --workers 1 2 --repeats 1 --rates 2000 --seconds 15]
                          [--steady-workers 1] [--user-features] [--failover classic consumer] [--baseline REV]

Generates the transaction events once; then, for each worker count and each transport (alternated, Redis Streams
first on even repeats, Kafka first on odd ones), on a fresh redis-server (the online store) and, for Kafka, on new
topics and a new consumer group of one local broker (Apache Kafka 4.x in KRaft mode, `tests/kafka_process.py`):
`fraudserve stream produce` appends every event (`--kafka` for Kafka), then `fraudserve stream run --workers N
--until-idle 1` drains them. Both transports spread the events over `--partitions` partitions by card.

Events/s are given three ways, read from the workers' own counter (`fraudserve:stream:stats`, processed) polled
every 50 ms, the same for both transports: with the processes' start-up (imports, the catalog, joining the group);
from the first applied event to the last; and from the moment every worker reads to the last (Redis Streams: each
worker is a consumer of the group; Kafka: the group is stable with every worker owning partitions), which is the
rate of a running deployment: on Kafka a second worker waits for the group to rebalance (up to a heartbeat) while
the first drains alone. The group is sampled from outside every 200 ms (`GroupMonitor`: state, each member's
partitions, committed offsets), giving the assignment's changes and each worker's committed events/s.

Freshness (`--rates`): `stream run --workers --steady-workers` running, events appended at a fixed rate in 50 ms
ticks for `--seconds`, the worker's sample of each event (append to online written) collected as it comes; p50, p99.

The load average is recorded before each run (the machine is shared: other jobs stretch wall time, which is why the
two transports alternate in one run). `--user-features`: the Feast repo is the built-ins plus bench.stream's 10
declared aggregations over two new entities (`bench.user_features.extra_views`), for drains and fixed rates alike.

`--consumer-protocol`: a transport "kafka-consumer", this tree's workers with KIP-848's consumer group protocol
(FRAUDSERVE_KAFKA_GROUP_PROTOCOL=consumer), alternated with the others. Each Kafka drain with several workers gives
its join wait: from the first sample of the group with every worker a member to the first where the group is stable
with each owning transaction partitions (the rebalance a second worker's join costs; sampled every 200 ms).

`--baseline REV`: a third transport, "kafka-baseline": Kafka on the same broker with the workers running commit
REV's code (`git archive`, as bench.stream's), alternated with the other two, and this tree's Kafka / REV's ratios.

Failover (`--failover classic consumer`): a killed worker's partitions moving to the survivor with each consumer
group protocol (classic, or KIP-848's consumer protocol), the same session timeout for both: two workers read events
appended at 500/s, one is SIGKILLed, and the group sampled every 100 ms gives the time until the broker drops it and
until the survivor commits on one of its partitions (`failover`).
Writes bench/results/kafka-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from bench.report import machine, print_table, write_result
from pipelines.generate import GenerateConfig, generate
from pipelines.stream.kafka_log import KafkaConfig, KafkaLog
from pipelines.stream.log import EVENTS, GROUP, RedisStreamLog, partition_keys
from pipelines.stream.worker import FRESHNESS
from tests.kafka_process import KafkaProcess
from tests.redis_process import RedisProcess

STATS = "fraudserve:stream:stats"


class GroupMonitor(threading.Thread):
    """Samples a Kafka consumer group from outside every `every_s` while it drains: the group's state, each
    member's assigned partitions (by client id), the committed offset of each partition, and the workers' processed
    counter in Redis. From these: when the partitions were (re)assigned, and each worker's events/s."""

    def __init__(self, bootstrap: str, group: str, topic: str, client: Any, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.group, self.topic, self.client, self.every_s = group, topic, client, every_s
        self.samples: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self._done = threading.Event()

    def sample(self) -> dict[str, Any]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        t = time.perf_counter() - self.started
        row: dict[str, Any] = {"t": round(t, 3), "processed": int(self.client.hget(STATS, "processed") or 0)}
        try:
            described = self.admin.describe_consumer_groups([self.group], request_timeout=2)[self.group].result()
            row["state"] = str(described.state).rsplit(".", 1)[-1]
            row["members"] = {
                m.client_id: sorted(tp.partition for tp in m.assignment.topic_partitions if tp.topic == self.topic)
                for m in described.members
            }
            offsets = self.admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(self.group)], request_timeout=2
            )[self.group].result()
            row["committed"] = {
                str(tp.partition): tp.offset for tp in offsets.topic_partitions if tp.topic == self.topic
            }
        except Exception as exc:  # the group not there yet: keep sampling
            row["error"] = str(exc)[:200]
        return row

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append(self.sample())
            self._done.wait(self.every_s)

    def stop(self) -> list[dict[str, Any]]:
        self._done.set()
        self.join(timeout=10)
        return self.samples


def join_wait(samples: list[dict[str, Any]], workers: int) -> float | None:
    """Seconds from the first sample with `workers` members in the group to the first where it is stable with each
    owning transaction partitions: what a joining worker waits for (None: never both, or one worker)."""
    joined = next((s["t"] for s in samples if len(s.get("members") or {}) >= workers), None)
    if joined is None or workers < 2:
        return None
    return next(
        (
            s["t"] - joined
            for s in samples
            if s["t"] >= joined and s.get("state") == "STABLE"
            and len(s.get("members") or {}) == workers and all((s.get("members") or {}).values())
        ),
        None,
    )  # fmt: skip


def group_timeline(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Assignment changes (time, member -> partitions) and each member's committed events/s while it owned
    partitions, from `GroupMonitor` samples."""
    changes: list[dict[str, Any]] = []
    previous: tuple[dict[str, list[int]], str | None] | None = None
    per_member: dict[str, int] = {}
    first_commit: dict[str, float] = {}
    last_commit: dict[str, float] = {}
    for before, after in itertools.pairwise(samples):
        members = after.get("members")
        if members is not None and (members, after.get("state")) != previous:
            changes.append({"t": after["t"], "state": after.get("state"), "members": members})
            previous = (members, after.get("state"))
        owners = {p: m for m, ps in (before.get("members") or {}).items() for p in ps}
        for partition, offset in (after.get("committed") or {}).items():
            old = max(int((before.get("committed") or {}).get(partition, 0)), 0)
            gained = max(int(offset), 0) - old
            if gained > 0:
                member = owners.get(int(partition), "(unknown)")
                per_member[member] = per_member.get(member, 0) + gained
                first_commit.setdefault(member, before["t"])
                last_commit[member] = after["t"]
    return {
        "samples": samples,  # per partition committed offsets over time (the lag: the partition's end minus these)
        "assignment_changes": changes,
        "committed_by_member": {
            m: {
                "events": n,
                "from_s": first_commit[m],
                "to_s": last_commit[m],
                "events_per_second": n / max(last_commit[m] - first_commit[m], 1e-9),
            }
            for m, n in per_member.items()
        },
    }


def environment(tmp: Path, name: str, transport: str, partitions: int, server: RedisProcess, broker: KafkaProcess,
                repo: Path | None = None) -> dict[str, str]:  # fmt: skip
    """The workers' settings: the run's redis-server, the Feast repo (`repo`, default feature_repo/), and for Kafka
    topics and a consumer group of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    env.update({
        "FRAUDSERVE_HOME": str(tmp / "home"), "FRAUDSERVE_REDIS": server.connection_string,
        "FRAUDSERVE_STREAM_PARTITIONS": str(partitions),
    })  # fmt: skip
    if repo is not None:
        env["FRAUDSERVE_FEATURE_REPO"] = str(repo)
    if transport == "kafka-consumer":
        env["FRAUDSERVE_KAFKA_GROUP_PROTOCOL"] = "consumer"
    if on_kafka(transport):
        env.update({
            "FRAUDSERVE_KAFKA_BOOTSTRAP": broker.bootstrap, "FRAUDSERVE_KAFKA_TRANSACTIONS_TOPIC": f"tx-{name}",
            "FRAUDSERVE_KAFKA_LABELS_TOPIC": f"labels-{name}", "FRAUDSERVE_KAFKA_DEAD_LETTER_TOPIC": f"dead-{name}",
            "FRAUDSERVE_KAFKA_GROUP": f"group-{name}",
        })  # fmt: skip
    return env


def on_kafka(transport: str) -> bool:
    """ "kafka", "kafka-consumer" (`--consumer-protocol`) or "kafka-baseline" (`--baseline`: the workers run commit
    REV's code on the same broker)."""
    return transport != "redis"


def working(transport: str, workers: int, client: Any, partitions: int, monitor: GroupMonitor | None) -> bool:
    """Every worker is reading: on Redis Streams each has read from the group (a consumer of a partition's
    stream); on Kafka the group is stable with every worker owning transaction partitions (the monitor's last
    sample)."""
    if on_kafka(transport):
        last = monitor.samples[-1] if monitor is not None and monitor.samples else {}
        members = last.get("members") or {}
        return last.get("state") == "STABLE" and len(members) == workers and all(members.values())
    names: set[Any] = set()
    for key in partition_keys(EVENTS, partitions):
        with contextlib.suppress(redis.ResponseError):  # no group yet
            names |= {c["name"] for c in client.xinfo_consumers(key, GROUP)}
    return len(names) >= workers


def cpu_seconds(pid: int | None) -> float:
    """A process's CPU time so far (user + system), from /proc; 0 when it is not there."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drain(
    tmp: Path,
    events_file: Path,
    transport: str,
    workers: int,
    partitions: int,
    broker: KafkaProcess,
    repo: Path | None = None,
    code: Path | None = None,
) -> dict[str, Any]:
    """Append every event through `transport` ("redis", "kafka" or "kafka-baseline"), then time `stream run
    --workers N` draining them; the workers run the code of the tree `code` (default: this one)."""
    name = f"{transport}-{workers}-{uuid.uuid4().hex[:6]}"
    server = RedisProcess(tmp / name).start()
    env = environment(tmp, name, transport, partitions, server, broker, repo)
    fraudserve = [sys.executable, "-m", "fraudserve"]
    produce = [*fraudserve, "stream", "produce", "--file", str(events_file)]
    produced = subprocess.run(
        [*produce, *(["--kafka"] if on_kafka(transport) else [])], env=env, check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    appended = re.search(r"appended ([\d,]+) events", produced.stdout)
    if appended is None:
        raise RuntimeError(f"stream produce said: {produced.stdout}{produced.stderr}")
    events = int(appended.group(1).replace(",", ""))
    client: Any = redis.Redis(port=server.port)
    load = os.getloadavg()
    # CPU of each part over the drain: the workers (children of `stream run`, counted when it has waited for them),
    # the online store's redis-server, and for Kafka the broker (the JVM), which shares the machine's cores
    broker_pid = broker.process.pid if on_kafka(transport) and broker.process is not None else None
    cpu_before = (resource.getrusage(resource.RUSAGE_CHILDREN), redis_cpu(client), cpu_seconds(broker_pid))
    started = time.perf_counter()
    output = tmp / f"worker-{name}.log"
    with output.open("w") as log_file:
        worker = subprocess.Popen(
            [*fraudserve, "stream", "run", "--workers", str(workers), "--until-idle", "1"], env=env, stdout=log_file,
            stderr=subprocess.STDOUT, cwd=code,
        )  # fmt: skip
    monitor = None
    if on_kafka(transport):
        monitor = GroupMonitor(broker.bootstrap, f"group-{name}", f"tx-{name}", client)
        monitor.started = started
        monitor.start()
    marks: list[tuple[float, int]] = []  # (time, processed) at the first applied batch and once all are applied
    everyone: tuple[float, int] | None = None  # (time, processed) once every worker reads
    while worker.poll() is None and len(marks) < 2:
        processed = int(client.hget(STATS, "processed") or 0)
        if (not marks and processed > 0) or (marks and processed >= events):
            marks.append((time.perf_counter(), processed))
        if everyone is None and working(transport, workers, client, partitions, monitor):
            everyone = (time.perf_counter(), processed)
        time.sleep(0.05)
    if worker.wait() != 0:
        raise RuntimeError(f"stream run failed: {output.read_text()[-2000:]}")
    seconds = time.perf_counter() - started - 1.0  # minus the idle second that ends the run
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {
        "workers_s": children.ru_utime + children.ru_stime - cpu_before[0].ru_utime - cpu_before[0].ru_stime,
        "redis_s": redis_cpu(client) - cpu_before[1],
        "broker_s": cpu_seconds(broker_pid) - cpu_before[2],
    }
    timeline = group_timeline(monitor.stop()) if monitor is not None else None
    if timeline is not None:
        timeline["join_wait_s"] = join_wait(timeline["samples"], workers)
    processed = int(client.hget(STATS, "processed") or 0)
    server.stop()
    if len(marks) < 2 or processed < events:
        raise RuntimeError(f"{transport}: {processed} of {events} events applied; see {output}")
    (t0, first), (t1, last) = marks
    # drained before every worker read (a small run): the figure from the first event, said so in the result
    ta, at = max(everyone, marks[0]) if everyone is not None else marks[0]
    return {
        "transport": transport,
        "workers": workers,
        "events": events,
        "processed": processed,  # more than events: some applied twice (a rebalance), harmless online
        "seconds": seconds,
        "events_per_second": events / seconds,
        "started": {"events": last - first, "seconds": t1 - t0, "events_per_second": (last - first) / (t1 - t0)},
        # from the moment every worker reads (Kafka: the group settled) to the last event applied
        "all_working": {
            "events": last - at,
            "seconds": t1 - ta,
            "events_per_second": (last - at) / (t1 - ta),
            "since_first_s": ta - t0,
            "every_worker_read": everyone is not None,
        },
        "load_average": load,
        # CPU seconds over the whole run (start-up included) and CPU microseconds per event
        "cpu_s": cpu,
        "cpu_us_per_event": {k.removesuffix("_s"): v / events * 1e6 for k, v in cpu.items()},
        "marks_s": [t - started for t, _ in marks],
        **({"group": timeline} if timeline is not None else {}),
    }


def fixed_rate(
    tmp: Path, events: list[dict[str, Any]], transport: str, rate: int, seconds: float, workers: int, partitions: int,
    broker: KafkaProcess, repo: Path | None = None, code: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Freshness at a fixed offered rate: `stream run --workers N` running (the code of the tree `code`, default this
    one), events appended at `rate` per second in 50 ms ticks for `seconds`; freshness of each event = the moment its
    online rows are written minus the moment it was appended (the worker's own samples: Redis Streams' entry id,
    Kafka's message time), all of them read as they come (the worker keeps only the newest 5,000)."""
    import numpy as np

    name = f"fresh-{transport}-{workers}-{uuid.uuid4().hex[:6]}"
    server = RedisProcess(tmp / name).start()
    env = environment(tmp, name, transport, partitions, server, broker, repo)
    client: Any = redis.Redis(port=server.port)
    log: Any
    monitor = None
    if on_kafka(transport):
        config = KafkaConfig(broker.bootstrap, f"tx-{name}", f"labels-{name}", f"dead-{name}", group=f"group-{name}",
                             partitions=partitions)  # fmt: skip
        log = KafkaLog(config)
        log.ensure_group()
        monitor = GroupMonitor(broker.bootstrap, config.group, config.transactions_topic, client, every_s=0.5)
    else:
        log = RedisStreamLog(client, partitions=partitions)
    output = tmp / f"worker-{name}.log"
    with output.open("w") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "fraudserve", "stream", "run", "--workers", str(workers)], env=env,
            stdout=log_file, stderr=subprocess.STDOUT, cwd=code,
        )  # fmt: skip
    try:
        if monitor is not None:
            monitor.start()
        # A few events at a time until every worker reads (Kafka: the group settled; Redis Streams: each worker is
        # a consumer of the group, which Redis records only once it has been handed an entry, so the events keep
        # coming until the last worker to start has had some), then the samples are cleared.
        warm_up = 0
        deadline = time.monotonic() + 180
        while int(client.hget(STATS, "processed") or 0) < warm_up or not working(
            transport, workers, client, partitions, monitor
        ):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{transport}: the workers did not start: {output.read_text()[-3000:]}")
            log.append("transaction", events[warm_up : warm_up + 4])
            warm_up += 4
            time.sleep(0.5)
        if monitor is not None:
            monitor.stop()
        time.sleep(1.0)
        client.delete(FRESHNESS)
        seen = int(client.hget(STATS, "processed") or 0)
        samples: list[int] = []
        # when the samples came (s since the fixed rate started), how many, their max: a stall shows as a gap
        # followed by one collection of many late samples, which percentiles alone do not tell from a slow path
        timeline: list[tuple[float, int, int]] = []
        began = time.perf_counter()

        def collect() -> None:
            nonlocal seen
            processed = int(client.hget(STATS, "processed") or 0)
            if processed > seen:
                new = [int(v) for v in client.lrange(FRESHNESS, 0, min(processed - seen, 5000) - 1)]
                samples.extend(new)
                if new:
                    timeline.append((round(time.perf_counter() - began, 3), len(new), max(new)))
                seen = processed

        tick = 0.05
        per_tick = max(1, int(rate * tick))
        load = os.getloadavg()
        started = time.perf_counter()
        sent = warm_up
        while time.perf_counter() - started < seconds and sent + per_tick <= len(events):
            log.append("transaction", events[sent : sent + per_tick])
            sent += per_tick
            collect()
            time.sleep(max(0.0, started + (sent - warm_up) / rate - time.perf_counter()))
        offered = (sent - warm_up) / (time.perf_counter() - started)
        deadline = time.monotonic() + 30
        while int(client.hget(STATS, "processed") or 0) < sent and time.monotonic() < deadline:
            collect()
            time.sleep(0.05)
        collect()
        applied = int(client.hget(STATS, "processed") or 0)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        if on_kafka(transport):
            log.close()
        server.stop()
    values = np.array(samples, dtype=float)
    return {
        "transport": transport, "workers": workers, "rate": rate, "offered_per_second": offered,
        "sent": sent - warm_up, "applied": applied - warm_up, "samples": int(values.size), "load_average": load,
        "freshness_p50_ms": float(np.percentile(values, 50)) if values.size else None,
        "freshness_p99_ms": float(np.percentile(values, 99)) if values.size else None,
        "freshness_max_ms": float(values.max()) if values.size else None,
        # the collections whose newest-batch max was over the p99, in time order: [s since the rate began, samples, max]
        "slow_collections": [list(c) for c in timeline if values.size and c[2] > np.percentile(values, 99)],
    }  # fmt: skip


def _protocol_worker(env: dict[str, str], protocol: str, name: str) -> None:
    """One stream worker (a `stream run` worker's loop) whose Kafka group uses `protocol` (`--failover`)."""
    import dataclasses
    from datetime import timedelta

    os.environ.update(env)
    from core.connections import redis_client
    from fraudserve.commands.common import load_settings
    from fraudserve.feature_store import feast_project
    from pipelines.stream.kafka_log import stream_kafka
    from pipelines.stream.worker import Worker

    settings = load_settings()
    config = stream_kafka(settings)
    assert config is not None
    log = KafkaLog(dataclasses.replace(config, group_protocol=protocol))
    redis_connection = env["FRAUDSERVE_REDIS"]
    Worker(redis_client(settings, redis_connection), feast_project(settings), name, timedelta(minutes=5), log=log).run()


def failover(
    tmp: Path, events: list[dict[str, Any]], protocol: str, partitions: int, broker: KafkaProcess, rate: int = 500,
    session_timeout_ms: int = 10_000,
) -> dict[str, Any]:  # fmt: skip
    """A killed worker's partitions moving to the survivor: two workers of one group (`protocol`: classic or
    consumer, KIP-848) read events appended at `rate`/s; once the group is stable with both owning transaction
    partitions, one is SIGKILLed. The group is sampled every 100 ms from outside: the time from the kill until the
    broker has dropped the dead member (`left_s`), and until a partition the dead worker owned has a new commit, i.e.
    the survivor consumed it (`moved_s`). Same session timeout for both protocols (FRAUDSERVE_KAFKA_SESSION_TIMEOUT_MS;
    the consumer protocol's as a group config, `KafkaLog._group_timeouts`)."""
    import multiprocessing

    name = f"failover-{protocol}-{uuid.uuid4().hex[:6]}"
    server = RedisProcess(tmp / name).start()
    env = environment(tmp, name, "kafka", partitions, server, broker)
    env["FRAUDSERVE_KAFKA_SESSION_TIMEOUT_MS"] = str(session_timeout_ms)
    client: Any = redis.Redis(port=server.port)
    config = KafkaConfig(broker.bootstrap, f"tx-{name}", f"labels-{name}", f"dead-{name}", group=f"group-{name}",
                         partitions=partitions)  # fmt: skip
    log = KafkaLog(config)
    log.ensure_group()
    context = multiprocessing.get_context("spawn")
    workers = {
        who: context.Process(target=_protocol_worker, args=(env, protocol, who), daemon=True)
        for who in ("victim", "survivor")
    }
    for process in workers.values():
        process.start()
    monitor = GroupMonitor(broker.bootstrap, config.group, config.transactions_topic, client, every_s=0.1)
    monitor.start()
    stop = threading.Event()

    def append() -> None:  # a steady stream, so that every partition always has something new to read
        sent, started = 0, time.perf_counter()
        while not stop.is_set() and sent < len(events):
            log.append("transaction", events[sent : sent + rate // 20])
            sent += rate // 20
            time.sleep(max(0.0, started + sent / rate - time.perf_counter()))

    producer = threading.Thread(target=append, daemon=True)
    producer.start()
    try:
        deadline = time.monotonic() + 180
        while True:
            last = monitor.samples[-1] if monitor.samples else {}
            members = last.get("members") or {}
            if last.get("state") == "STABLE" and set(members) == set(workers) and all(members.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{protocol}: the group did not settle with both workers: {last}")
            time.sleep(0.1)
        time.sleep(2.0)  # both reading and committing
        owned = sorted(monitor.samples[-1]["members"]["victim"])
        load = os.getloadavg()
        killed = time.perf_counter()
        workers["victim"].kill()
        workers["victim"].join()
        left = moved = None
        baseline: dict[str, Any] | None = None  # the committed offsets once the victim's last commits have landed
        deadline = time.monotonic() + 120
        while (left is None or moved is None) and time.monotonic() < deadline:
            time.sleep(0.05)
            for sample in [s for s in monitor.samples if s["t"] + monitor.started > killed]:
                at = sample["t"] + monitor.started - killed
                members, committed = sample.get("members"), sample.get("committed")
                if members is None or committed is None:
                    continue
                if left is None and "victim" not in members:
                    left = at
                if baseline is None and at >= 0.5:
                    baseline = dict(committed)
                taken = set(members.get("survivor", [])) & set(owned)
                if (
                    moved is None
                    and baseline is not None
                    and any(int(committed.get(str(p), -1)) > int(baseline.get(str(p), -1)) for p in taken)
                ):
                    moved = at
        owners = monitor.samples[-1].get("members") or {}
    finally:
        stop.set()
        producer.join(timeout=10)
        monitor.stop()
        for process in workers.values():
            if process.is_alive():
                process.kill()
            process.join(timeout=30)
        log.close()
        server.stop()
    return {
        "protocol": protocol, "session_timeout_ms": session_timeout_ms, "rate": rate, "victim_partitions": owned,
        "left_s": left, "moved_s": moved, "survivor_owns": sorted(owners.get("survivor", [])), "load_average": load,
    }  # fmt: skip


def valid_events(path: Path) -> list[dict[str, Any]]:
    """The file's transactions as the logs' `append` takes them (validated, the time as `ts_ms`)."""
    import json

    import numpy as np

    from pipelines.events import TRANSACTIONS
    from pipelines.stream.producer import normalized
    from pipelines.validation import check

    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    columns: dict[str, Any] = {name: [r.get(name) for r in rows] for name in TRANSACTIONS.schema.names}
    return normalized(TRANSACTIONS, check(TRANSACTIONS, columns, np.arange(1, len(rows) + 1)).valid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=3000)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="none: no drains")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--transports", nargs="+", default=["redis", "kafka"], choices=["redis", "kafka"])
    parser.add_argument("--rates", type=int, nargs="*", default=[2000], help="fixed offered rates for freshness")
    parser.add_argument("--seconds", type=float, default=15, help="duration of each fixed-rate run")
    parser.add_argument("--steady-workers", type=int, default=1, help="worker processes for the fixed rates")
    parser.add_argument(
        "--user-features", action="store_true",
        help="the Feast repo is the built-ins plus bench.stream's 10 declared aggregations (bench.user_features)",
    )  # fmt: skip
    parser.add_argument(
        "--failover", nargs="*", default=[], choices=["classic", "consumer"],
        help="group protocols whose failover is timed: a worker of two SIGKILLed, its partitions to the survivor",
    )  # fmt: skip
    parser.add_argument("--failover-repeats", type=int, default=2)
    parser.add_argument(
        "--consumer-protocol", action="store_true",
        help="also Kafka with KIP-848's consumer group protocol (transport kafka-consumer), same run, alternated",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", metavar="REV",
        help="also Kafka with the workers running commit REV's code (git archive), same broker, same run, alternated",
    )  # fmt: skip
    args = parser.parse_args()
    console = Console()
    failovers: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    freshness: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as name:
        tmp = Path(name)
        config = GenerateConfig(seed=31, cards=args.cards, days=args.days, end=datetime(2026, 11, 1, tzinfo=UTC))
        events_file = generate(tmp / "raw", config).files["transactions_jsonl"]
        repo = None
        if args.user_features:
            from bench.user_features import extra_views
            from tests.user_repo import user_repo

            repo = user_repo(tmp / "repo" / "feature_repo", {"bench_windows.py": extra_views(60)}, {})
        codes: dict[str, Path | None] = {"redis": None, "kafka": None}
        if args.consumer_protocol:
            codes["kafka-consumer"] = None
        if args.baseline:
            from bench.stream import baseline_tree

            codes["kafka-baseline"] = baseline_tree(tmp, args.baseline)
        transports = [
            t for t in codes if t in args.transports or (t.startswith("kafka-") and "kafka" in args.transports)
        ]
        broker = KafkaProcess(tmp / "kafka").start()
        try:
            for repeat in range(args.repeats):
                for workers in args.workers:
                    order = transports if repeat % 2 == 0 else list(reversed(transports))
                    for transport in order:
                        run = drain(
                            tmp, events_file, transport, workers, args.partitions, broker, repo, codes[transport]
                        )
                        console.print(
                            f"{transport} x{workers}: {run['all_working']['events_per_second']:,.0f} events/s once "
                            f"every worker reads ({run['all_working']['since_first_s']:.2f} s after the first event);"
                            f" {run['started']['events_per_second']:,.0f} from the first event, "
                            f"{run['events_per_second']:,.0f} with start-up; load {run['load_average'][0]:.1f}"
                        )
                        per_event = run["cpu_us_per_event"]
                        console.print(
                            f"  CPU per event: workers {per_event['workers']:,.0f} us, redis {per_event['redis']:,.0f}"
                            f" us, broker {per_event['broker']:,.0f} us"
                        )
                        if run.get("group", {}).get("join_wait_s") is not None:
                            console.print(f"  join wait {run['group']['join_wait_s']:.2f} s")
                        for change in run.get("group", {}).get("assignment_changes", []):
                            console.print(f"  {change['t']:6.2f} s {change['state']}: {change['members']}")
                        for member, rate in run.get("group", {}).get("committed_by_member", {}).items():
                            console.print(
                                f"  {member}: {rate['events']:,} committed from {rate['from_s']:.2f} to "
                                f"{rate['to_s']:.2f} s, {rate['events_per_second']:,.0f}/s"
                            )
                        runs.append(run)
            if args.rates or args.failover:
                events = valid_events(events_file)
            for index, rate in enumerate(args.rates):
                order = transports if index % 2 == 0 else list(reversed(transports))
                for transport in order:
                    fresh = fixed_rate(
                        tmp,
                        events,
                        transport,
                        rate,
                        args.seconds,
                        args.steady_workers,
                        args.partitions,
                        broker,
                        repo,
                        codes[transport],
                    )
                    console.print(
                        f"{transport} at {rate:,}/s offered ({fresh['offered_per_second']:,.0f} sent/s), "
                        f"{args.steady_workers} worker(s): freshness p50 {fresh['freshness_p50_ms']:.0f} ms, p99 "
                        f"{fresh['freshness_p99_ms']:.0f} ms, max {fresh['freshness_max_ms']:.0f} ms "
                        f"({fresh['samples']:,} samples, {fresh['applied']:,}/{fresh['sent']:,} applied), "
                        f"load {fresh['load_average'][0]:.1f}"
                    )
                    freshness.append(fresh)
            for repeat in range(args.failover_repeats if args.failover else 0):
                for protocol in args.failover if repeat % 2 == 0 else list(reversed(args.failover)):
                    moved = failover(tmp, events, protocol, args.partitions, broker)
                    console.print(
                        f"failover, {protocol} protocol: the killed worker left the group {moved['left_s']} s after "
                        f"the SIGKILL, its partitions {moved['victim_partitions']} consumed by the survivor after "
                        f"{moved['moved_s']} s; load {moved['load_average'][0]:.1f}"
                    )
                    failovers.append(moved)
        finally:
            broker.stop()

    def best(transport: str, workers: int, key: str) -> float:
        figures = [r for r in runs if r["transport"] == transport and r["workers"] == workers]
        return max(float(r[key]["events_per_second"] if key != "total" else r["events_per_second"]) for r in figures)

    def ratio(numerator: float, denominator: float) -> float:
        """nan when the denominator is 0: a run too small for every worker to read before it was drained."""
        return numerator / denominator if denominator else float("nan")

    rows, ratios = [], {}
    baseline_ratios: dict[str, Any] = {}
    for workers in args.workers if args.baseline else []:
        baseline_ratios[str(workers)] = {
            key: ratio(best("kafka", workers, field), best("kafka-baseline", workers, field))
            for key, field in (("all_working", "all_working"), ("started", "started"), ("with_startup", "total"))
        }
        console.print(
            f"Kafka, this tree / {args.baseline}, {workers} worker(s): "
            f"{baseline_ratios[str(workers)]['all_working']:.2f}x once every worker reads, "
            f"{baseline_ratios[str(workers)]['started']:.2f}x from the first event (best of {args.repeats})"
        )
    for workers in args.workers if set(args.transports) == {"redis", "kafka"} else []:
        ratios[str(workers)] = {
            key: ratio(best("kafka", workers, field), best("redis", workers, field))
            for key, field in (("all_working", "all_working"), ("started", "started"), ("with_startup", "total"))
        }
        rows.append([
            str(workers), *(f"{best(t, workers, 'all_working'):,.0f}" for t in ("redis", "kafka")),
            f"{ratios[str(workers)]['all_working']:.2f}",
            *(f"{best(t, workers, 'started'):,.0f}" for t in ("redis", "kafka")),
            f"{ratios[str(workers)]['started']:.2f}",
        ])  # fmt: skip
    if rows:
        print_table(
            console,
            f"stream drain, {runs[0]['events']:,} events, {args.partitions} partitions (best of {args.repeats}), "
            f"{'built-ins + 10 declared aggregations' if args.user_features else 'built-in features'}",
            ["workers", "Redis ev/s, all reading", "Kafka ev/s, all reading", "Kafka / Redis",
             "Redis ev/s, from the first", "Kafka ev/s, from the first", "Kafka / Redis"],
            rows,
        )  # fmt: skip
    console.print(f"load average at the end: {os.getloadavg()}")
    write_result(
        console, "kafka",
        {"machine": machine(), "args": vars(args), "runs": runs, "freshness": freshness, "failover": failovers,
         "load_average_end": os.getloadavg(), **({"ratios_kafka_to_redis": ratios} if ratios else {}),
         **({"ratios_kafka_to_baseline": baseline_ratios} if baseline_ratios else {})},
    )  # fmt: skip


if __name__ == "__main__":
    main()
