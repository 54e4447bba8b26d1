"""The stream's two transports in the same run: events/s drained through Apache Kafka against Redis Streams.

    python -m bench.kafka [--cards 3000 --days 2 --partitions 4 --workers 1 2 --repeats 1]

Generates the transaction events once; then, for each worker count and each transport (alternated, Redis Streams
first on even repeats, Kafka first on odd ones), on a fresh redis-server (the online store) and, for Kafka, on new
topics and a new consumer group of one local broker (Apache Kafka 4.x in KRaft mode, `tests/kafka_process.py`):
`fraudserve stream produce` appends every event (`--kafka` for Kafka), then `fraudserve stream run --workers N
--until-idle 1` drains them. Both transports spread the events over `--partitions` partitions by card.

Events/s are given twice, as `bench.stream` gives them: with the processes' start-up (imports, the catalog, joining
the group), and once started: from the first applied event to the last, read from the workers' own counter
(`fraudserve:stream:stats`, processed) polled every 50 ms, the same for both transports. The ratio Kafka / Redis
Streams is per worker count. The load average is recorded before each drain (the machine is shared: other jobs
stretch wall time, which is why the two transports alternate in one run). Writes bench/results/kafka-<date>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from bench.report import machine, print_table, write_result
from pipelines.generate import GenerateConfig, generate
from tests.kafka_process import KafkaProcess
from tests.redis_process import RedisProcess

STATS = "fraudserve:stream:stats"


def drain(
    tmp: Path, events_file: Path, transport: str, workers: int, partitions: int, broker: KafkaProcess
) -> dict[str, Any]:
    """Append every event through `transport` ("redis" or "kafka"), then time `stream run --workers N` draining
    them."""
    name = f"{transport}-{workers}-{uuid.uuid4().hex[:6]}"
    server = RedisProcess(tmp / name).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    env.update({
        "FRAUDSERVE_HOME": str(tmp / "home"), "FRAUDSERVE_REDIS": server.connection_string,
        "FRAUDSERVE_STREAM_PARTITIONS": str(partitions),
    })  # fmt: skip
    if transport == "kafka":
        env.update({
            "FRAUDSERVE_KAFKA_BOOTSTRAP": broker.bootstrap, "FRAUDSERVE_KAFKA_TRANSACTIONS_TOPIC": f"tx-{name}",
            "FRAUDSERVE_KAFKA_LABELS_TOPIC": f"labels-{name}", "FRAUDSERVE_KAFKA_DEAD_LETTER_TOPIC": f"dead-{name}",
            "FRAUDSERVE_KAFKA_GROUP": f"group-{name}",
        })  # fmt: skip
    fraudserve = [sys.executable, "-m", "fraudserve"]
    produce = [
        *fraudserve,
        "stream",
        "produce",
        "--file",
        str(events_file),
        *(["--kafka"] if transport == "kafka" else []),
    ]
    produced = subprocess.run(produce, env=env, check=True, capture_output=True, text=True)
    appended = re.search(r"appended ([\d,]+) events", produced.stdout)
    if appended is None:
        raise RuntimeError(f"stream produce said: {produced.stdout}{produced.stderr}")
    events = int(appended.group(1).replace(",", ""))
    client: Any = redis.Redis(port=server.port)
    load = os.getloadavg()
    started = time.perf_counter()
    output = tmp / f"worker-{name}.log"
    with output.open("w") as log_file:
        worker = subprocess.Popen(
            [*fraudserve, "stream", "run", "--workers", str(workers), "--until-idle", "1"], env=env, stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    marks: list[tuple[float, int]] = []  # (time, processed) at the first applied batch and once all are applied
    while worker.poll() is None and len(marks) < 2:
        processed = int(client.hget(STATS, "processed") or 0)
        if (not marks and processed > 0) or (marks and processed >= events):
            marks.append((time.perf_counter(), processed))
        time.sleep(0.05)
    if worker.wait() != 0:
        raise RuntimeError(f"stream run failed: {output.read_text()[-2000:]}")
    seconds = time.perf_counter() - started - 1.0  # minus the idle second that ends the run
    processed = int(client.hget(STATS, "processed") or 0)
    server.stop()
    if len(marks) < 2 or processed < events:
        raise RuntimeError(f"{transport}: {processed} of {events} events applied; see {output}")
    (t0, first), (t1, last) = marks
    return {
        "transport": transport,
        "workers": workers,
        "events": events,
        "processed": processed,  # more than events: some applied twice (a rebalance), harmless online
        "seconds": seconds,
        "events_per_second": events / seconds,
        "started": {"events": last - first, "seconds": t1 - t0, "events_per_second": (last - first) / (t1 - t0)},
        "load_average": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=3000)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    console = Console()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as name:
        tmp = Path(name)
        config = GenerateConfig(seed=31, cards=args.cards, days=args.days, end=datetime(2026, 11, 1, tzinfo=UTC))
        events_file = generate(tmp / "raw", config).files["transactions_jsonl"]
        broker = KafkaProcess(tmp / "kafka").start()
        try:
            for repeat in range(args.repeats):
                for workers in args.workers:
                    order = ("redis", "kafka") if repeat % 2 == 0 else ("kafka", "redis")
                    for transport in order:
                        run = drain(tmp, events_file, transport, workers, args.partitions, broker)
                        console.print(
                            f"{transport} x{workers}: {run['started']['events_per_second']:,.0f} events/s once started"
                            f" ({run['events_per_second']:,.0f} with start-up), load {run['load_average'][0]:.1f}"
                        )
                        runs.append(run)
        finally:
            broker.stop()

    def best(transport: str, workers: int, key: str) -> float:
        figures = [r for r in runs if r["transport"] == transport and r["workers"] == workers]
        return max(
            float(r["started"]["events_per_second"] if key == "started" else r["events_per_second"]) for r in figures
        )

    rows, ratios = [], {}
    for workers in args.workers:
        redis_rate, kafka_rate = best("redis", workers, "started"), best("kafka", workers, "started")
        ratios[str(workers)] = {
            "started": kafka_rate / redis_rate,
            "with_startup": best("kafka", workers, "total") / best("redis", workers, "total"),
        }
        rows.append([
            str(workers), f"{redis_rate:,.0f}", f"{kafka_rate:,.0f}", f"{ratios[str(workers)]['started']:.2f}",
            f"{best('redis', workers, 'total'):,.0f}", f"{best('kafka', workers, 'total'):,.0f}",
        ])  # fmt: skip
    print_table(
        console, f"stream drain, {runs[0]['events']:,} events, {args.partitions} partitions (best of {args.repeats})",
        ["workers", "Redis Streams ev/s", "Kafka ev/s", "Kafka / Redis", "Redis with start-up", "Kafka with start-up"],
        rows,
    )  # fmt: skip
    console.print(f"load average at the end: {os.getloadavg()}")
    write_result(
        console, "kafka",
        {"machine": machine(), "args": vars(args), "runs": runs, "ratios_kafka_to_redis": ratios,
         "load_average_end": os.getloadavg()},
    )  # fmt: skip


if __name__ == "__main__":
    main()
