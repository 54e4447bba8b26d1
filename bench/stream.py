"""Stream worker throughput: events/s with one and with two worker processes, and freshness.

    python -m bench.stream [--cards 6000 --days 3] [--baseline REV] [--user-features] [--repeats N]

Generates events, appends them all to the stream, then times `fraudserve stream run --workers N --until-idle 1`
draining it on a fresh redis-server, for N = 1 and 2 (`--cluster`: also on a local 3-master Redis Cluster). Each
drain also records where the CPU went, the numbers that limit N workers: the workers' CPU per event (their rusage)
and Redis's per event from `INFO commandstats`, split into the stream's own commands (XREADGROUP, XACK, XAUTOCLAIM:
one stream key, so one node's thread) and the entity state and row commands (spread over a cluster's nodes by key).
Events/s are given twice: with the processes' start-up (imports, the catalog), as earlier results counted them, and
once started (from the first acknowledged batch to an empty stream, polled every 50 ms, with the CPU of that span),
which is the rate a running deployment drains at. `--baseline REV`: the same drains, in the same run and alternated
with the current tree, by the code of commit REV (`git archive` into a temporary folder, run with the same
virtualenv), and the ratios. `--repeats N`: every drain N times, the code that goes first alternating; the run with
the median rate once started is kept, each repeat's ratio printed. `--user-features`: the Feast repo is the
built-ins plus 10 declared aggregations over two new entities (`bench.user_features.extra_views`). Freshness at
steady rates: one worker on a single Redis. Writes bench/results/stream-<date>.json.
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
from pipelines.stream.log import RedisStreamLog
from tests.redis_cluster import RedisCluster
from tests.redis_process import RedisProcess
from tests.user_repo import user_repo

STREAM_COMMANDS = {"xreadgroup", "xack", "xautoclaim", "xinfo|groups", "xlen", "xinfo"}


def redis_usec(clients: list[Any]) -> dict[str, float]:
    """Microseconds Redis spent per command since the last CONFIG RESETSTAT, summed over the nodes."""
    spent: dict[str, float] = {}
    for client in clients:
        for name, stats in client.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            spent[command] = spent.get(command, 0.0) + float(stats["usec"])
    return spent


def baseline_tree(tmp: Path, rev: str) -> Path:
    """The project's files at commit `rev`, to run the baseline's `python -m fraudserve` from (its packages come
    first on sys.path; the virtualenv is the same)."""
    root = tmp / f"baseline-{rev}"
    root.mkdir()
    archive = subprocess.run(["git", "archive", rev], cwd=Path(__file__).resolve().parents[1], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def drain(tmp: Path, files: dict[str, Path], workers: int, cluster: bool, code: Path | None = None,
          repo: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Append every event, then time `stream run --workers N --until-idle 1` draining them (the code of the tree
    `code`, default this one; the Feast repo `repo`, default feature_repo/)."""
    import resource

    from bench.user_features import tree_cpu_seconds  # imports this module: not at the top

    name = f"{'cluster' if cluster else 'redis'}-{workers}-{time.monotonic_ns()}"
    server: RedisProcess | RedisCluster = (
        RedisCluster(tmp / name).start() if cluster else RedisProcess(tmp / name).start()
    )
    nodes: list[Any] = (
        [server.node_client(p) for p in server.ports] if isinstance(server, RedisCluster) else [server.client()]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    env.update({"FRAUDSERVE_HOME": str(tmp / "home"), "FRAUDSERVE_REDIS": server.connection_string,
                "FRAUDSERVE_REDIS_TYPE": "redis_cluster" if cluster else "redis"})  # fmt: skip
    if repo is not None:
        env["FRAUDSERVE_FEATURE_REPO"] = str(repo)
    cwd = str(code) if code is not None else None
    fraudserve = [sys.executable, "-m", "fraudserve"]
    subprocess.run([*fraudserve, "stream", "produce", "--file", str(files["transactions_jsonl"])],
                   env=env, check=True, capture_output=True, cwd=cwd)  # fmt: skip
    events = int(server.client().xlen("fraudserve:events"))  # type: ignore[arg-type]
    for client in nodes:
        client.config_resetstat()
    log = RedisStreamLog(server.client())  # type: ignore[arg-type]  # a cluster client serves the same calls
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    output = tmp / f"worker-{name}.log"
    with output.open("w") as log_file:
        worker = subprocess.Popen([*fraudserve, "stream", "run", "--workers", str(workers), "--until-idle", "1"],
                                  env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=cwd)  # fmt: skip
    # (time, events left, workers' CPU s, Redis us by command) at the first acknowledged batch and at the end
    marks: list[tuple[float, int, float, dict[str, float]]] = []
    while worker.poll() is None and len(marks) < 2:
        lag = log.lag()
        left = lag["lag"] + lag["pending"]
        if (not marks and left < events) or (marks and left == 0):
            marks.append((time.perf_counter(), left, tree_cpu_seconds(worker.pid), redis_usec(nodes) | {
                "cpu": sum(float(c.info("cpu")["used_cpu_user"]) + float(c.info("cpu")["used_cpu_sys"]) for c in nodes)
            }))  # fmt: skip
        time.sleep(0.05)
    if worker.wait() != 0:
        raise RuntimeError(f"stream run failed: {output.read_text()[-2000:]}")
    seconds = time.perf_counter() - started - 1.0  # minus the idle wait that ends the run
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = redis_usec(nodes)
    memory = sum(int(c.info("memory")["used_memory"]) - int(c.info("memory")["used_memory_startup"]) for c in nodes)
    server.stop()
    if len(marks) < 2:
        raise RuntimeError("the workers did not drain the stream while they were watched")
    (t0, steady_events, cpu0, redis0), (t1, _, cpu1, redis1) = marks
    redis_cpu = redis1.pop("cpu") - redis0.pop("cpu")  # Redis's own CPU seconds (commandstats count wall time)
    steady_spent = {k: v - redis0.get(k, 0.0) for k, v in redis1.items()}
    stream_usec = sum(v for k, v in spent.items() if k in STREAM_COMMANDS)
    worker_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "events": events,
        "seconds": seconds,
        "events_per_second": events / seconds,
        "worker_cpu_us_per_event": worker_cpu * 1e6 / events,  # includes each process's start-up (imports)
        "redis_us_per_event": sum(spent.values()) / events,
        "redis_stream_us_per_event": stream_usec / events,
        "redis_memory_bytes_per_event": memory / events,  # the stream itself, window state and online rows
        "redis_top_commands_us_per_event": {
            k: round(v / events, 2) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])[:8]
        },
        "started": {
            "events": steady_events,
            "seconds": t1 - t0,
            "events_per_second": steady_events / (t1 - t0),
            "worker_cpu_us_per_event": (cpu1 - cpu0) * 1e6 / steady_events,
            "redis_us_per_event": sum(steady_spent.values()) / steady_events,
            "redis_cpu_us_per_event": redis_cpu * 1e6 / steady_events,
        },
    }


def steady(tmp: Path, lines: list[str], rate: int, seconds: float, workers: int = 1, code: Path | None = None,
           repo: Path | None = None) -> dict[str, float]:  # fmt: skip
    """Append events at a steady rate while `workers` workers run; freshness = append to visible online, per
    event."""
    import numpy as np

    from pipelines.events import TRANSACTIONS
    from pipelines.stream.producer import normalized
    from pipelines.stream.worker import FRESHNESS, STATS
    from pipelines.validation import check

    server = RedisProcess(tmp / f"redis-steady-{rate}-{time.monotonic_ns()}").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    env.update({"FRAUDSERVE_HOME": str(tmp / "home"), "FRAUDSERVE_REDIS": server.connection_string})
    if repo is not None:
        env["FRAUDSERVE_FEATURE_REPO"] = str(repo)
    worker = subprocess.Popen([sys.executable, "-m", "fraudserve", "stream", "run", "--workers", str(workers)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=str(code) if code is not None else None)  # fmt: skip
    client: Any = redis.Redis(port=server.port)
    rows = [json.loads(line) for line in lines]
    columns: dict[str, Any] = {name: [r.get(name) for r in rows] for name in TRANSACTIONS.schema.names}
    events = normalized(TRANSACTIONS, check(TRANSACTIONS, columns, np.arange(1, len(rows) + 1)).valid)
    stream = RedisStreamLog(client)
    # Freshness measures the steady state: a few events first, until they are applied (the workers have started:
    # imports, the catalog; processes start together), then the samples are cleared.
    warm_up = 2 * workers
    stream.append("transaction", events[:warm_up])
    deadline = time.monotonic() + 180
    while int(client.hget(STATS, "processed") or 0) < warm_up:
        if worker.poll() is not None:
            raise RuntimeError(f"stream run exited with {worker.returncode} before applying an event")
        if time.monotonic() > deadline:
            raise RuntimeError("the workers applied nothing within 180 s")
        time.sleep(0.2)
    time.sleep(2.0)
    client.delete(FRESHNESS)
    tick = 0.05
    per_tick = max(1, int(rate * tick))
    started = time.perf_counter()
    sent = warm_up
    while time.perf_counter() - started < seconds and sent + per_tick <= len(events):
        stream.append("transaction", events[sent : sent + per_tick])
        sent += per_tick
        time.sleep(max(0.0, started + ((sent - warm_up) / rate) - time.perf_counter()))
    time.sleep(1.0)
    lag = stream.lag()
    samples = np.array([int(v) for v in client.lrange(FRESHNESS, 0, -1)], dtype=float)
    worker.terminate()
    worker.wait()
    server.stop()
    return {
        "rate": rate,
        "sent": sent - warm_up,
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
    parser.add_argument("--steady-workers", type=int, default=1, help="worker processes for the steady rates")
    parser.add_argument("--cluster", action="store_true", help="also drain on a local 3-master Redis Cluster")
    parser.add_argument("--baseline", help="a commit whose code drains the same events in the same run")
    parser.add_argument("--user-features", action="store_true", help="built-ins + 10 declared aggregations")
    parser.add_argument("--repeats", type=int, default=1, help="drains per code and worker count (median kept)")
    args = parser.parse_args()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-") as tmp:
        generated = generate(
            Path(tmp) / "raw",
            GenerateConfig(seed=9, cards=args.cards, days=args.days, end=datetime(2026, 11, 1, tzinfo=UTC)),
        )
        repo = None
        if args.user_features:
            from bench.user_features import extra_views  # imports this module: not at the top

            repo = user_repo(Path(tmp) / "repo" / "feature_repo", {"bench_windows.py": extra_views(60)}, {})
            result["extra_views"] = extra_views(60)
        codes: list[tuple[str, Path | None]] = [("", None)]
        if args.baseline:
            codes = [("baseline_", baseline_tree(Path(tmp), args.baseline)), ("", None)]
        runs: dict[str, list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):
            for cluster in (False, True) if args.cluster else (False,):
                for workers in (1, 2):
                    # every other repeat the current tree goes first: neither pays a quieter stretch alone
                    for prefix, code in codes if repeat % 2 == 0 else codes[::-1]:
                        figures = drain(Path(tmp), generated.files, workers, cluster, code, repo)
                        where = "3-master cluster" if cluster else "single Redis"
                        key = f"{prefix}{'cluster_' if cluster else ''}workers_{workers}"
                        runs.setdefault(key, []).append(figures)
                        started = figures["started"]
                        print(f"{prefix or 'current '}{where}, {workers} worker(s): {figures['events']:,} events in "
                              f"{figures['seconds']:.1f} s = {figures['events_per_second']:,.0f} events/s with "
                              f"start-up; once started {started['events_per_second']:,.0f} events/s, worker CPU "
                              f"{started['worker_cpu_us_per_event']:.0f} us/event, Redis CPU "
                              f"{started['redis_cpu_us_per_event']:.0f} us/event (commands "
                              f"{started['redis_us_per_event']:.0f})", flush=True)  # fmt: skip
        for key, found in runs.items():  # the run with the median rate once started stands for its code
            ordered = sorted(found, key=lambda f: f["started"]["events_per_second"])
            result[key] = ordered[(len(ordered) - 1) // 2]
            result[f"repeats_{key}"] = [f["started"]["events_per_second"] for f in found]
        if args.baseline:
            for key in [k for k in runs if not k.startswith("baseline_")]:
                ratios = [c["started"]["events_per_second"] / b["started"]["events_per_second"]
                          for c, b in zip(runs[key], runs[f"baseline_{key}"], strict=True)]  # fmt: skip
                median = result[key]["started"]["events_per_second"]  # type: ignore[index]
                ratio = median / result[f"baseline_{key}"]["started"]["events_per_second"]  # type: ignore[index]
                result[f"ratio_{key}"] = ratio
                result[f"repeat_ratios_{key}"] = ratios
                print(f"{key}: current / baseline, once started, medians: {ratio:.2f}x; repeat by repeat "
                      f"{', '.join(f'{r:.2f}x' for r in ratios)}", flush=True)  # fmt: skip
        lines = generated.files["transactions_jsonl"].read_text().splitlines()
        for rate in (int(r) for r in args.rates.split(",") if r):  # --rates "": drains only
            for prefix, code in codes:
                figures = steady(Path(tmp), lines, rate, args.seconds, args.steady_workers, code, repo)
                result[f"{prefix}steady_{rate}"] = figures
                print(f"{prefix or 'current '}steady {rate:,} events/s for {args.seconds:.0f} s, "
                      f"{args.steady_workers} worker(s): freshness p50 {figures['freshness_p50_ms']:.0f} ms, "
                      f"p99 {figures['freshness_p99_ms']:.0f} ms, lag at the end {figures['lag_at_end']:,}",
                      flush=True)  # fmt: skip
    write_result(Console(), "stream", result)


if __name__ == "__main__":
    main()
