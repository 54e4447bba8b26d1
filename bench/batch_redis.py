"""Where a 256-id `score:batch` read's Redis time goes: the flat lookup script, variants of it, and the batch lookup
without Lua that score:batch now uses.

    flock /tmp/fraudserve-bench.lock .venv/bin/python -m bench.batch_redis [--home /tmp/fs-batch-bench]

On bench.api's deployment (`--home`: reused), the script `RedisFeatureSource.columns` sends for 256 random ingested
ids (the served model's plan) is run 200 times as it is, then without its reply (the same reads, `return n`), then
reading the transactions only. `INFO commandstats` gives Redis's own time per script call and, within it, the time
its HMGETs themselves took: the rest is the Lua around them (a `redis.call` per HMGET, its arguments and its reply
as Lua tables, the join keys' parsing, the flat reply). Last, `BatchLookup.columns` (inference_api/domain/
batch_lookup.py: the transactions' HMGETs, then one per unique entity, pipelined) on the same batches: its Redis time
and the client's wall time per call ("cells returned": the decoded columns' values). Writes
bench/results/batch_redis-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import struct
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.api import embedded_store, prepare
from bench.report import machine, print_table, write_result
from core.connections import redis_client
from fraudserve import feature_store
from fraudserve.registry import open_registry
from inference_api.domain import redis_source
from inference_api.domain.plan import for_model, resolve_plan, transaction_layout
from pipelines.online_layout import key_prefix


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="bench.api's deployment (reused; built there when missing)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--ids", type=int, default=256)
    args = parser.parse_args()
    console = Console(width=150)
    result: dict[str, Any] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    result["load_average_at_start"] = os.getloadavg()
    with contextlib.ExitStack() as stack:
        root, settings, connection = embedded_store(stack, args.home, "fraudserve-bench-")
        ids = [r[0] for r in prepare(root, settings, connection, 2000, 30, console)]
        store = feature_store.open_store(settings, connection)
        manifest = open_registry(settings).get("fraud").manifest
        plan = for_model(resolve_plan(store, manifest.feature_service), manifest.feature_names)
        join_key, fields = transaction_layout(store)
        project = store.config.project.encode()
        full = redis_source._lookup_script(project, fields, plan.views, redis_source._FLAT_BODY)
        scripts = {
            "the API's script": full,
            "the same reads, no reply": full.replace("return out", "return n"),
            "transactions only": redis_source._lookup_script(project, fields, (), redis_source._FLAT_BODY),
        }
        client = redis_client(settings, connection)
        prefix = key_prefix(join_key)

        def key(transaction_id: str) -> bytes:
            raw = transaction_id.encode()
            return prefix + struct.pack("<I", len(raw)) + raw + project

        rng = random.Random(3)
        samples = [rng.sample(ids, args.ids) for _ in range(args.calls)]
        batches = [[key(t) for t in sample] for sample in samples]
        table = []
        for name, script in scripts.items():
            sha = client.script_load(script)
            for keys in batches[:5]:
                client.evalsha(sha, len(keys), *keys)  # warm
            client.config_resetstat()
            reply: Any = None
            for keys in batches:
                reply = client.evalsha(sha, len(keys), *keys)
            stats = client.info("commandstats")
            script_stats, hmget = stats["cmdstat_evalsha"], stats.get("cmdstat_hmget", {"calls": 0, "usec": 0})
            calls = int(script_stats["calls"])
            row = {
                "us_per_call": float(script_stats["usec"]) / calls,
                "hmget_us_per_call": float(hmget["usec"]) / calls,
                "hmgets_per_call": int(hmget["calls"]) / calls,
                "cells_per_call": len(reply) if isinstance(reply, list) else None,
            }
            result[name] = row
            table.append((name, f"{row['us_per_call']:,.0f} us", f"{row['hmget_us_per_call']:,.0f} us",
                          f"{row['hmgets_per_call']:,.0f}", str(row["cells_per_call"] or "")))  # fmt: skip
        row = pipelined(store, plan, samples, client)
        result["the batch lookup, no Lua"] = row
        table.append(("the batch lookup, no Lua (2 pipelined trips)", f"{row['us_per_call']:,.0f} us",
                      f"{row['hmget_us_per_call']:,.0f} us", f"{row['hmgets_per_call']:,.0f}",
                      f"{row['cells_per_call']}"))  # fmt: skip
        console.print(f"the batch lookup in the client: p50 {row['client_p50_us']:,.0f} us per call (wall, Redis's "
                      "time included)")  # fmt: skip
    result["load_average_at_end"] = os.getloadavg()
    print_table(console, f"Redis's own time per lookup call, {args.ids} random ids ({args.calls} calls)",
                ("read", "Redis's time", "of which HMGET", "HMGETs", "cells returned"), table)  # fmt: skip
    console.print(f"load average: start {result['load_average_at_start']}, end {result['load_average_at_end']}")
    console.print(json.dumps({k: v for k, v in result.items() if isinstance(v, dict) and "us_per_call" in v}))
    write_result(console, "batch_redis", result)


def pipelined(store: Any, plan: Any, samples: list[list[str]], client: Any) -> dict[str, Any]:
    """`BatchLookup.columns` (score:batch's read: plain HMGETs in two pipelined trips) on the same batches: Redis's
    own time per call from `INFO commandstats` (every command it sent is an HMGET), and the client's wall time."""
    import asyncio
    import time

    import numpy as np

    from inference_api.domain.batch_lookup import BatchLookup
    from inference_api.domain.redis_source import RedisFeatureSource

    async def run() -> dict[str, Any]:
        source = RedisFeatureSource(store, 5.0)
        lookup = BatchLookup(source)
        numeric = (*plan.transaction_fields, *(("amount", "event_time_ms") if plan.request_time else ()))
        try:
            for sample in samples[:5]:
                await lookup.columns(sample, plan, numeric)  # warm
            client.config_resetstat()
            times = []
            for sample in samples:
                started = time.perf_counter()
                columns = await lookup.columns(sample, plan, numeric)
                times.append(time.perf_counter() - started)
        finally:
            await lookup.close()
            await source.close()
        hmget = client.info("commandstats").get("cmdstat_hmget", {"calls": 0, "usec": 0})
        return {
            "us_per_call": float(hmget["usec"]) / len(samples),
            "hmget_us_per_call": float(hmget["usec"]) / len(samples),
            "hmgets_per_call": int(hmget["calls"]) / len(samples),
            "cells_per_call": sum(len(c) for c in (*columns.numbers.values(), *columns.stamps.values())),
            "client_p50_us": float(np.median(times) * 1e6),
        }

    return asyncio.run(run())


if __name__ == "__main__":
    main()
