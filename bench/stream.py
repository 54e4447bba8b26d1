"""Stream worker throughput: events/s with one and with two worker processes, and freshness.

    python -m bench.stream [--cards 6000 --days 3]

Generates events, appends them all to the stream, then times `fraudserve stream run --workers N --until-idle 1`
draining it on a fresh redis-server, for N = 1 and 2 (`--cluster`: also on a local 3-master Redis Cluster). Each
drain also records where the CPU went, the numbers that limit N workers: the workers' CPU per event (their
rusage) and Redis's per event from `INFO commandstats`, split into the stream's own commands (XREADGROUP, XACK,
XAUTOCLAIM: one stream key, so one node's thread) and the entity state and row commands (spread over a cluster's
nodes by key). Freshness at steady rates: one worker on a single Redis. Writes bench/results/stream-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from rich.console import Console

from bench.report import machine, write_result
from pipelines.generate import GenerateConfig, generate
from tests.redis_cluster import RedisCluster
from tests.redis_process import RedisProcess

STREAM_COMMANDS = {"xreadgroup", "xack", "xautoclaim", "xinfo|groups", "xlen", "xinfo"}


def redis_usec(clients: list[Any]) -> dict[str, float]:
    """Microseconds Redis spent per command since the last CONFIG RESETSTAT, summed over the nodes."""
    spent: dict[str, float] = {}
    for client in clients:
        for name, stats in client.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            spent[command] = spent.get(command, 0.0) + float(stats["usec"])
    return spent


def drain(tmp: Path, files: dict[str, Path], workers: int, cluster: bool) -> dict[str, Any]:
    """Append every event, then time `stream run --workers N --until-idle 1` draining them."""
    import resource

    name = f"{'cluster' if cluster else 'redis'}-{workers}"
    server: RedisProcess | RedisCluster = (
        RedisCluster(tmp / name).start() if cluster else RedisProcess(tmp / name).start()
    )
    nodes: list[Any] = (
        [server.node_client(p) for p in server.ports] if isinstance(server, RedisCluster) else [server.client()]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    env.update({"FRAUDSERVE_HOME": str(tmp / "home"), "FRAUDSERVE_REDIS": server.connection_string,
                "FRAUDSERVE_REDIS_TYPE": "redis_cluster" if cluster else "redis"})  # fmt: skip
    fraudserve = [sys.executable, "-m", "fraudserve"]
    subprocess.run([*fraudserve, "stream", "produce", "--file", str(files["transactions_jsonl"])],
                   env=env, check=True, capture_output=True)  # fmt: skip
    events = int(server.client().xlen("fraudserve:events"))  # type: ignore[arg-type]
    for client in nodes:
        client.config_resetstat()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([*fraudserve, "stream", "run", "--workers", str(workers), "--until-idle", "1"], env=env,
                   check=True, capture_output=True)  # fmt: skip
    seconds = time.perf_counter() - started - 1.0  # minus the idle wait that ends the run
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = redis_usec(nodes)
    memory = sum(int(c.info("memory")["used_memory"]) - int(c.info("memory")["used_memory_startup"]) for c in nodes)
    server.stop()
    stream_usec = sum(v for k, v in spent.items() if k in STREAM_COMMANDS)
    worker_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "events": events,
        "seconds": seconds,
        "events_per_second": events / seconds,
        "worker_cpu_us_per_event": worker_cpu * 1e6 / events,  # includes each process's start-up (imports)
        "redis_us_per_event": sum(spent.values()) / events,
        "redis_stream_us_per_event": stream_usec / events,
        "redis_memory_bytes_per_event": memory / events,  # the stream itself, histories and online rows
        "redis_top_commands_us_per_event": {
            k: round(v / events, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])[:8]
        },
    }


def steady(tmp: Path, lines: list[str], rate: int, seconds: float) -> dict[str, float]:
    """Append events at a steady rate while one worker runs; freshness = append to visible online, per event."""
    import numpy as np

    from pipelines.events import TRANSACTIONS
    from pipelines.stream.log import RedisStreamLog
    from pipelines.stream.producer import normalized
    from pipelines.stream.worker import FRESHNESS
    from pipelines.validation import check

    server = RedisProcess(tmp / f"redis-steady-{rate}").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    env.update({"FRAUDSERVE_HOME": str(tmp / "home"), "FRAUDSERVE_REDIS": server.connection_string})
    worker = subprocess.Popen([sys.executable, "-m", "fraudserve", "stream", "run"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    client: Any = redis.Redis(port=server.port)
    time.sleep(8)  # worker start-up (imports), so that freshness measures steady state
    rows = [json.loads(line) for line in lines]
    columns: dict[str, Any] = {name: [r.get(name) for r in rows] for name in TRANSACTIONS.schema.names}
    events = normalized(TRANSACTIONS, check(TRANSACTIONS, columns, np.arange(1, len(rows) + 1)).valid)
    stream = RedisStreamLog(client)
    tick = 0.05
    per_tick = max(1, int(rate * tick))
    started = time.perf_counter()
    sent = 0
    while time.perf_counter() - started < seconds and sent + per_tick <= len(events):
        stream.append("transaction", events[sent : sent + per_tick])
        sent += per_tick
        time.sleep(max(0.0, started + (sent / rate) - time.perf_counter()))
    time.sleep(1.0)
    lag = stream.lag()
    samples = np.array([int(v) for v in client.lrange(FRESHNESS, 0, -1)], dtype=float)
    worker.terminate()
    worker.wait()
    server.stop()
    return {
        "rate": rate,
        "sent": sent,
        "freshness_p50_ms": float(np.percentile(samples, 50)) if samples.size else float("nan"),
        "freshness_p99_ms": float(np.percentile(samples, 99)) if samples.size else float("nan"),
        "lag_at_end": lag["lag"] + lag["pending"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=6000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--rates", default="500,1000,2000", help="steady append rates (events/s) for freshness")
    parser.add_argument("--seconds", type=float, default=20, help="duration of each steady-rate run")
    parser.add_argument("--cluster", action="store_true", help="also drain on a local 3-master Redis Cluster")
    args = parser.parse_args()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-") as tmp:
        generated = generate(
            Path(tmp) / "raw",
            GenerateConfig(seed=9, cards=args.cards, days=args.days, end=datetime(2026, 11, 1, tzinfo=UTC)),
        )
        for cluster in (False, True) if args.cluster else (False,):
            for workers in (1, 2):
                figures = drain(Path(tmp), generated.files, workers, cluster)
                where = "3-master cluster" if cluster else "single Redis"
                result[f"{'cluster_' if cluster else ''}workers_{workers}"] = figures
                print(f"{where}, {workers} worker(s): {figures['events']:,} events in {figures['seconds']:.1f} s = "
                      f"{figures['events_per_second']:,.0f} events/s; worker CPU "
                      f"{figures['worker_cpu_us_per_event']:.0f} us/event, Redis "
                      f"{figures['redis_us_per_event']:.1f} us/event (stream commands "
                      f"{figures['redis_stream_us_per_event']:.1f})")  # fmt: skip
        lines = generated.files["transactions_jsonl"].read_text().splitlines()
        for rate in (int(r) for r in args.rates.split(",")):
            figures = steady(Path(tmp), lines, rate, args.seconds)
            result[f"steady_{rate}"] = figures
            print(f"steady {rate:,} events/s for {args.seconds:.0f} s, 1 worker: freshness p50 "
                  f"{figures['freshness_p50_ms']:.0f} ms, p99 {figures['freshness_p99_ms']:.0f} ms, "
                  f"lag at the end {figures['lag_at_end']:,}")  # fmt: skip
    write_result(Console(), "stream", result)


if __name__ == "__main__":
    main()
