"""Stream worker throughput: events/s with one and with two worker processes, and freshness.

    python -m bench.stream [--cards 6000 --days 3]

Generates events, appends them all to the stream, then times `fraudserve stream run --workers N --until-idle 1`
draining it on a fresh redis-server, for N = 1 and 2. Freshness here is append-to-visible under a backlog (every
event waits for the drain), not at a steady rate. Writes bench/results/stream-<date>.json.
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

from bench.pipeline import RESULTS, machine
from pipelines.generate import GenerateConfig, generate
from tests.redis_process import RedisProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=6000)
    parser.add_argument("--days", type=int, default=3)
    args = parser.parse_args()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-") as tmp:
        generated = generate(
            Path(tmp) / "raw",
            GenerateConfig(seed=9, cards=args.cards, days=args.days, end=datetime(2026, 11, 1, tzinfo=UTC)),
        )
        for workers in (1, 2):
            server = RedisProcess(Path(tmp) / f"redis-{workers}").start()
            env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
            env.update({"FRAUDSERVE_HOME": str(Path(tmp) / "home"), "FRAUDSERVE_REDIS": server.connection_string})
            fraudserve = [sys.executable, "-m", "fraudserve"]
            subprocess.run([*fraudserve, "stream", "produce", "--file", str(generated.files["transactions_jsonl"])],
                           env=env, check=True, capture_output=True)  # fmt: skip
            client: Any = redis.Redis(port=server.port)
            events = int(client.xlen("fraudserve:events"))
            started = time.perf_counter()
            subprocess.run([*fraudserve, "stream", "run", "--workers", str(workers), "--until-idle", "1"], env=env,
                           check=True, capture_output=True)  # fmt: skip
            seconds = time.perf_counter() - started - 1.0  # minus the idle wait that ends the run
            result[f"workers_{workers}"] = {"events": events, "seconds": seconds, "events_per_second": events / seconds}
            print(f"{workers} worker(s): {events:,} events in {seconds:.1f} s = {events / seconds:,.0f} events/s "
                  "(including process start-up)")  # fmt: skip
            server.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"stream-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
