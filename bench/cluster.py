"""Score-by-id on a 3-master local Redis Cluster against a single Redis: same data, same model, same run.

    python -m bench.cluster [--seconds 8] [--rounds 3] [--workers 2] [--home DIR]

Builds (or, with `--home`, reuses) bench/api.py's deployment on the embedded redis-server: synthetic data, backfill,
a trained and registered LightGBM model, materialized features (fast engine). Then starts a local Redis Cluster of
three masters (tests/redis_cluster.py) and materializes the same offline store into it (Feast's own engine: the fast
one is single-node only), checks that both hold the same number of keys and that both APIs give the same scores, and
runs two `fraudserve serve` processes side by side, one per online store (FRAUDSERVE_REDIS_TYPE=redis_cluster for
the cluster). The same closed-loop client (bench/load.py) drives `POST /v1/fraud/score {"transaction_id"}` at 1 and
8 connections, alternating the two servers in `--rounds` rounds so that load from other work on the machine falls on
both alike; each configuration's figures pool its rounds. On a single Redis the API reads a transaction and its
entities' features in one Lua round trip; on a cluster (keys of one request on different masters) in two pipelined
round trips, fanned out to the masters concurrently. Every node runs on this machine, so the cluster shows the cost
of its protocol, not the capacity of more machines. Prints a table with the ratios and writes
bench/results/cluster-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from rich.console import Console
from rich.table import Table

from bench.api import prepare, wait_ready
from bench.load import LoadResult, run_load
from bench.report import machine, write_result
from core.embedded_redis import free_port, online_store
from core.settings import RedisType, Settings
from fraudserve import feature_store
from pipelines.materialize import materialize
from tests.redis_cluster import RedisCluster

STORES = ("single Redis", "3-master cluster")
PATH = "/v1/fraud/score"


def pooled(results: list[LoadResult]) -> LoadResult:
    """The rounds of one configuration as one measurement: all requests over all their seconds."""
    return LoadResult(
        sum(r.requests for r in results),
        sum(r.errors for r in results),
        sum(r.seconds for r in results),
        np.concatenate([r.latencies_ms for r in results]),
    )


def same_answers(urls: dict[str, str], ids: list[str]) -> int:
    """How many ids both servers score identically (score, label, reasons)."""
    same = 0
    for transaction_id in ids:
        answers = []
        for url in urls.values():
            body = httpx.post(f"{url}{PATH}", json={"transaction_id": transaction_id}, timeout=30).json()
            answers.append((body.get("score"), body.get("label"), [r["feature"] for r in body.get("reasons", [])]))
        same += answers[0] == answers[1]
    return same


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8, help="seconds per configuration per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each API server")
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--home", type=Path, help="keep the deployment here and reuse it on the next run")
    args = parser.parse_args()
    console = Console()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    with contextlib.ExitStack() as stack:
        root = args.home or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraudserve-bench-")))
        os.environ["FRAUDSERVE_HOME"] = str(root / "home")
        os.environ.pop("FRAUDSERVE_REDIS", None)
        os.environ.pop("FRAUDSERVE_REDIS_TYPE", None)
        settings = Settings()
        single = stack.enter_context(online_store(None, settings.embedded_redis_dir, settings.redis_server_bin))
        recent = prepare(root, settings, single, args.cards, args.days, console)

        console.print("starting a 3-master Redis Cluster and materializing the same offline store into it ...")
        cluster = RedisCluster(root / "cluster").start()
        stack.callback(cluster.stop)
        on_cluster = settings.model_copy(
            update={"redis": cluster.connection_string, "redis_type": RedisType.redis_cluster}
        )
        summary = materialize(feature_store.open_store(on_cluster, cluster.connection_string), settings.offline)
        result["cluster materialize"] = {"engine": summary.engine, "rows": summary.rows, "seconds": summary.seconds}
        sizes = cluster.dbsize()
        single_keys: Any = redis.Redis.from_url(f"redis://{single}").dbsize()
        result["keys"] = {"single": int(single_keys), "cluster": sum(sizes.values()), "per master": sizes}
        console.print(f"keys: single {single_keys:,}, cluster {sum(sizes.values()):,} ({sizes})")

        environments = {
            STORES[0]: {**settings.feast_environment(single), "FRAUDSERVE_REDIS": single},
            STORES[1]: {**on_cluster.feast_environment(cluster.connection_string),
                        "FRAUDSERVE_REDIS": cluster.connection_string, "FRAUDSERVE_REDIS_TYPE": "redis_cluster"},
        }  # fmt: skip
        bodies: list[dict[str, object]] = [{"transaction_id": r[0]} for r in recent]
        urls: dict[str, str] = {}
        for name, environment in environments.items():
            port = free_port()
            log = stack.enter_context((root / f"serve-{name.replace(' ', '_')}.log").open("w"))
            process = subprocess.Popen(
                [sys.executable, "-m", "fraudserve", "serve", "--workers", str(args.workers), "--port", str(port)],
                env={**os.environ, **environment},
                stdout=log,
                stderr=log,
            )
            stack.callback(process.wait, 30)
            stack.callback(process.terminate)
            urls[name] = f"http://127.0.0.1:{port}"
            wait_ready(f"{urls[name]}{PATH}", bodies[0])
        checked = [str(b["transaction_id"]) for b in bodies[:200]]
        same = same_answers(urls, checked)
        result["same answers"] = f"{same}/{len(checked)}"
        console.print(f"same score, label and reasons on both stores: {same}/{len(checked)} ids")
        if same != len(checked):
            raise SystemExit("the two online stores do not give the same answers: not comparable")

        result["load average before"] = os.getloadavg()  # other work on the machine: the figures' noise
        ports = {name: int(url.rsplit(":", 1)[1]) for name, url in urls.items()}
        for name in STORES:
            run_load("127.0.0.1", ports[name], PATH, bodies, 1, 2)  # warm-up
        rounds: dict[tuple[str, int], list[LoadResult]] = {(n, c): [] for n in STORES for c in (1, 8)}
        for index in range(args.rounds):
            for connections in (1, 8):
                order = STORES if index % 2 == 0 else STORES[::-1]
                for name in order:
                    load = run_load("127.0.0.1", ports[name], PATH, bodies, connections, args.seconds)
                    rounds[(name, connections)].append(load)
                    console.print(
                        f"round {index + 1} {name} c{connections}: {load.rps:,.0f} requests/s, "
                        f"p50 {load.pct(50):.2f} ms, p99 {load.pct(99):.2f} ms, errors {load.errors}"
                    )
        result["load average after"] = os.getloadavg()

    table = Table(
        title=f"score by id: 3-master local Redis Cluster vs single Redis, {args.workers} worker(s) per API, "
        f"{os.cpu_count()} cores shared by both APIs, every Redis and the load generator; "
        f"{args.rounds} rounds x {args.seconds:g} s"
    )
    for column in ("online store", "connections", "requests/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    for connections in (1, 8):
        measured = {name: pooled(rounds[(name, connections)]) for name in STORES}
        for name, load in measured.items():
            result[f"{name} c{connections}"] = {
                **load.summary(),
                "rounds rps": [r.rps for r in rounds[(name, connections)]],
            }
            table.add_row(name, str(connections), f"{load.rps:,.0f}", f"{load.pct(50):.2f}", f"{load.pct(99):.2f}",
                          str(load.errors))  # fmt: skip
        base, clustered = measured[STORES[0]], measured[STORES[1]]
        ratios = {
            "rps": clustered.rps / base.rps,
            "p50": clustered.pct(50) / base.pct(50),
            "p99": clustered.pct(99) / base.pct(99),
        }
        result[f"ratio cluster / single c{connections}"] = ratios
        table.add_row(
            "cluster / single", str(connections), f"{ratios['rps']:.2f}x", f"{ratios['p50']:.2f}x",
            f"{ratios['p99']:.2f}x", "",
        )  # fmt: skip
    console.print(table)
    write_result(console, "cluster", result)


if __name__ == "__main__":
    main()
