"""`fraudserve stream produce`: events/s appended from a JSON Lines file, validation included, against the per-row path
it replaced and against raw XADD pipelining (the ceiling), in the same run on a fresh redis-server.

    python -m bench.produce [--cards 6000 --days 3 --large-days 30 --repeats 3]

Generates the events (`--cards`/`--days` as `bench.stream`: about 33 k transactions, the issue's file size; and a
`--large-days` file), then, each the best of `--repeats` runs on an emptied Redis:
- per_row: the path `stream produce` ran before (worker.produce at 9fd4c84, copied below): each line `json.loads`-ed,
  columns built row by row, `check` typing every value one by one (today's whole-column typing switched off, which
  leaves the code as it was), a dict per event, `json.dumps` per event, redis-py's pipeline of `xadd`s;
- produce: `pipelines.stream.producer.produce`, in-process (what the command runs once started);
- xadd_ceiling: only the XADDs of the already encoded entries (`RedisStreamLog.append_encoded`): Redis and the socket;
- cli: `fraudserve stream produce --file` as a process, end to end (interpreter, imports, settings, the declared
  event fields, Redis connection), after one run that remembers the declared fields; `cli_one_event` is the same on a
  one-event file, its fixed cost. Whether that process imported Feast is recorded (`feast_imported`).
Wall seconds and this process's CPU seconds are both recorded (the CLI's: its user+system time), with the load
average, since other jobs on a shared machine stretch wall time. Writes bench/results/produce-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from rich.console import Console

from bench.report import machine, print_table, write_result
from pipelines import validation
from pipelines.events import TRANSACTIONS, EventKind
from pipelines.generate import GenerateConfig, generate
from pipelines.stream.log import EVENTS, RedisStreamLog
from pipelines.stream.producer import encode_events, normalized, produce
from pipelines.validation import check
from tests.producer_reference import per_line_batches
from tests.redis_process import RedisProcess

TARGET = 20_000  # events/s, issue 14


# ------------------------------------------------------------------------ the per-row path (worker.py at 9fd4c84)
def per_row_produce(client: Any, path: Path, kind: EventKind) -> int:
    with mock.patch.object(validation, "_exactly", lambda *args: None):  # every value typed on its own, as before
        return _per_row_produce(client, path, kind)


def _per_row_produce(client: Any, path: Path, kind: EventKind) -> int:
    appended = 0
    for rows, columns, unreadable in per_line_batches(path, kind.schema.names, 20_000):
        checked = validation.check(kind, columns, rows, unreadable)
        pipe = client.pipeline(transaction=False)
        for event in normalized(kind, checked.valid):
            pipe.xadd(EVENTS, {"kind": kind.name, "event": json.dumps(event, separators=(",", ":"))})
        pipe.execute()
        appended += checked.valid.num_rows
    return appended


# ----------------------------------------------------------------------------------------------------- timing
def best_of(repeats: int, client: Any, run: Callable[[], int]) -> dict[str, float]:
    """The fastest of `repeats` runs on an emptied Redis: wall and CPU seconds, events, Redis usec per XADD."""
    best: dict[str, float] | None = None
    for _ in range(repeats):
        client.flushall()
        client.config_resetstat()
        cpu, wall = time.process_time(), time.perf_counter()
        events = run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert int(client.xlen(EVENTS)) == events
        xadd = client.info("commandstats").get("cmdstat_xadd", {})
        figures = {
            "events": events,
            "wall_s": wall,
            "cpu_s": cpu,
            "events_per_s": events / wall,
            "cpu_us_per_event": cpu * 1e6 / events,
            "redis_us_per_xadd": float(xadd.get("usec_per_call", 0)),
        }
        if best is None or wall < best["wall_s"]:
            best = figures
    assert best is not None
    return best


CLI = """
import atexit, runpy, sys
atexit.register(lambda: print("feast imported:", "feast" in sys.modules))
sys.argv = ["fraudserve", "stream", "produce", "--file", sys.argv[1]]
runpy.run_module("fraudserve", run_name="__main__")
"""


def cli(repeats: int, client: Any, path: Path, env: dict[str, str]) -> dict[str, Any]:
    best: dict[str, Any] | None = None
    for _ in range(repeats):
        client.flushall()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CLI, str(path)], env=env, capture_output=True, text=True,
                              check=True, timeout=600)  # fmt: skip
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        events = int(client.xlen(EVENTS))
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        figures = {"events": events, "wall_s": wall, "cpu_s": cpu, "events_per_s": events / wall,
                   "feast_imported": "feast imported: True" in done.stdout}  # fmt: skip
        if best is None or wall < best["wall_s"]:
            best = figures
    assert best is not None
    return best


def measure(tmp: Path, name: str, path: Path, repeats: int, with_baseline: bool) -> dict[str, Any]:
    server = RedisProcess(tmp / f"redis-{name}").start()
    client: Any = server.client()
    try:
        result: dict[str, Any] = {"file": str(path), "lines": sum(1 for _ in path.open("rb"))}
        if with_baseline:
            result["per_row"] = best_of(repeats, client, lambda: per_row_produce(client, path, TRANSACTIONS))
        result["produce"] = best_of(repeats, client, lambda: produce(client, path, TRANSACTIONS)["appended"])
        records = [json.loads(line) for line in path.open("rb")]
        columns = {name: [r.get(name) for r in records] for name in TRANSACTIONS.schema.names}
        payloads = encode_events(TRANSACTIONS, check(TRANSACTIONS, columns, np.arange(1, len(records) + 1)).valid)
        stream = RedisStreamLog(client)
        result["xadd_ceiling"] = best_of(repeats, client, lambda: stream.append_encoded("transaction", payloads))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
        env.update({"FRAUDSERVE_HOME": str(tmp / "home"), "FRAUDSERVE_REDIS": server.connection_string})
        one = tmp / f"{name}-one.jsonl"
        one.write_bytes(path.read_bytes().split(b"\n", 1)[0] + b"\n")
        cli(1, client, one, env)  # remembers the declared event fields under FRAUDSERVE_HOME
        result["cli"] = cli(repeats, client, path, env)
        result["cli_one_event"] = cli(repeats, client, one, env)
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=6000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--large-days", type=int, default=30, help="a second, larger file (0: none)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    console = Console()
    result: dict[str, Any] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args),
                              "load_average_before": os.getloadavg(), "target_events_per_s": TARGET}  # fmt: skip
    end = datetime(2026, 11, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        files = {"standard": generate(tmp / "raw", GenerateConfig(seed=9, cards=args.cards, days=args.days, end=end))}
        if args.large_days:
            config = GenerateConfig(seed=9, cards=args.cards, days=args.large_days, end=end)
            files["large"] = generate(tmp / "raw-large", config)
        for name, generated in files.items():
            path = generated.files["transactions_jsonl"]
            result[name] = measure(tmp, name, path, args.repeats, with_baseline=name == "standard")
    result["load_average_after"] = os.getloadavg()
    rows = []
    for name in files:
        figures = result[name]
        for way in ("per_row", "produce", "xadd_ceiling", "cli", "cli_one_event"):
            if way in figures:
                f = figures[way]
                cpu = f"{f['cpu_s']:.2f} s" + (" (Feast imported)" if f.get("feast_imported") else "")
                rows.append(
                    [f"{name}: {way}", f"{f['events']:,}", f"{f['wall_s']:.2f} s", f"{f['events_per_s']:,.0f}", cpu]
                )
        if "per_row" in figures:
            ratio = figures["produce"]["events_per_s"] / figures["per_row"]["events_per_s"]
            figures["produce_over_per_row"] = ratio
            rows.append([f"{name}: produce / per_row", "", "", f"{ratio:.1f}x", ""])
        figures["cli_meets_target"] = figures["cli"]["events_per_s"] >= TARGET
    title = f"stream produce from JSONL ({os.cpu_count()} cores, load {result['load_average_before'][0]:.1f})"
    print_table(console, title, ["file: path", "events", "wall", "events/s", "CPU"], rows)
    write_result(console, "produce", result)


if __name__ == "__main__":
    main()
