"""Score-by-id throughput and latency against Feast's own feature server, in the same run on the same machine.

    python -m bench.api [--seconds 15] [--workers 2]

Builds a small deployment (synthetic data, backfill, a trained model, materialize) on an embedded redis-server,
then loads, one after the other with the same closed-loop client at 1 and 8 connections:
- fraudserve `POST /v1/fraud/score {"transaction_id"}`: transaction lookup, feature fetch, predict, label;
- Feast `feast serve` `POST /get-online-features` for the same feature service and the same entities (features
  only, no model, no transaction lookup).
Prints a table and writes bench/results/api-<date>.json. The load generator shares the machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
from rich.console import Console
from rich.table import Table

from bench.load import run_load
from bench.report import machine, write_result
from core.embedded_redis import free_port, online_store
from core.models.manifest import Flavor
from core.settings import Settings
from fraudserve import feature_store
from fraudserve.registry import open_registry
from pipelines.generate import GenerateConfig, generate
from pipelines.materialize import materialize
from pipelines.offline.backfill import backfill
from pipelines.training.dataset import build_training_set
from pipelines.training.train import TrainConfig, train


def wait_ready(url: str, body: dict[str, object], seconds: float = 120) -> None:
    """Until the endpoint answers the benchmark's own request with 200 (every worker process started)."""
    deadline = time.monotonic() + seconds
    ok = 0
    while time.monotonic() < deadline and ok < 10:
        try:
            ok = ok + 1 if httpx.post(url, json=body, timeout=5).status_code == 200 else 0
        except httpx.HTTPError:
            ok = 0
            time.sleep(0.5)
    if ok < 10:
        raise RuntimeError(f"{url} did not answer 200 within {seconds} s")


def prepare(
    root: Path, settings: Settings, connection: str, cards: int, days: int, console: Console
) -> list[tuple[str, str, str, str | None, str | None]]:
    """Data, backfill, a registered model and materialized features under `root`; reused when already there."""
    marker = root / "prepared.json"
    if marker.exists():
        console.print(f"reusing the deployment under {root}")
        return [(r[0], r[1], r[2], r[3], r[4]) for r in json.loads(marker.read_text())]
    generated = generate(
        root / "raw", GenerateConfig(seed=3, cards=cards, days=days, end=datetime.now(UTC).replace(microsecond=0))
    )
    feature_store.apply(settings, connection)
    backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
    store = feature_store.open_store(settings, connection)
    console.print("training a model ...")
    trained = train(build_training_set(store, "fraud_v2", settings.offline), TrainConfig(Flavor.lightgbm), root / "pkg")
    open_registry(settings).register(trained.package, name="fraud", feature_service="fraud_v2")
    console.print("materializing ...")
    materialize(store, settings.offline)
    recent = (
        duckdb.connect()
        .execute(
            f"SELECT transaction_id, card_id, merchant_id, device_id, ip_address FROM "
            f"read_parquet('{settings.offline.transactions_file}') ORDER BY event_timestamp DESC LIMIT 2000"
        )
        .fetchall()
    )
    marker.write_text(json.dumps(recent))
    return [(r[0], r[1], r[2], r[3], r[4]) for r in recent]


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--workers", type=int, default=2, help="worker processes for both servers")
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--top-reasons", type=int, default=3, help="FRAUDSERVE_TOP_REASONS for fraudserve (0: none)")
    parser.add_argument("--home", type=Path, help="keep the deployment here and reuse it on the next run")
    parser.add_argument("--only", action="append", help="measure only this server (repeatable)")
    args = parser.parse_args()
    console = Console()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    with contextlib.ExitStack() as stack:
        root = args.home or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraudserve-bench-")))
        os.environ["FRAUDSERVE_HOME"] = str(root / "home")
        os.environ.pop("FRAUDSERVE_REDIS", None)
        settings = Settings()
        connection = stack.enter_context(online_store(None, settings.embedded_redis_dir, settings.redis_server_bin))
        env = {**os.environ, **settings.feast_environment(connection)}
        recent = prepare(root, settings, connection, args.cards, args.days, console)
        ours: list[dict[str, object]] = [{"transaction_id": r[0]} for r in recent]
        theirs: list[dict[str, object]] = [
            {"feature_service": "fraud_v2", "entities": {
                "transaction_id": [r[0]], "card_id": [r[1]], "merchant_id": [r[2]],
                "device_id": [r[3] or ""], "ip_address": [r[4] or ""]}}
            for r in recent
        ]  # fmt: skip
        uvicorn_flags = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
        servers: dict[str, tuple[list[str], str, list[dict[str, object]], Path | None]] = {
            "fraudserve": (
                [sys.executable, "-m", "fraudserve", "serve", "--workers", str(args.workers), "--port"],
                "/v1/fraud/score", ours, None,
            ),
            "feast serve": (
                [str(Path(sys.executable).parent / "feast"), "serve", "-w", str(args.workers), "-p"],
                "/get-online-features", theirs, settings.feature_repo,
            ),
            "constant FastAPI": (
                [sys.executable, "-m", "uvicorn", "bench.constant_app:app", *uvicorn_flags, "--workers",
                 str(args.workers), "--port"],
                "/v1/fraud/score", ours, Path(__file__).parent.parent,
            ),
        }  # fmt: skip
        rows = []
        for name, (command, path, bodies, cwd) in servers.items():
            if args.only and name not in args.only:
                continue
            port = free_port()
            log = (root / f"{name.replace(' ', '_')}.log").open("w")
            process = subprocess.Popen(
                [*command, str(port)],
                env={**env, "FRAUDSERVE_REDIS": connection, "FRAUDSERVE_TOP_REASONS": str(args.top_reasons)},
                cwd=cwd,
                stdout=log,
                stderr=log,
            )
            try:
                wait_ready(f"http://127.0.0.1:{port}{path}", bodies[0])
                run_load("127.0.0.1", port, path, bodies, 1, 2)  # warm-up
                for connections in (1, 8):
                    load = run_load("127.0.0.1", port, path, bodies, connections, args.seconds)
                    result[f"{name} c{connections}"] = load.summary()
                    rows.append((name, connections, load))
            finally:
                process.terminate()
                process.wait(timeout=30)

    table = Table(
        title=f"score by id vs feast serve, {args.workers} worker(s) each, {os.cpu_count()} cores "
        "(shared with the load generator)"
    )
    for column in ("server", "connections", "requests/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    for name, connections, load in rows:
        table.add_row(name, str(connections), f"{load.rps:,.0f}", f"{load.pct(50):.2f}", f"{load.pct(99):.2f}",
                      str(load.errors))  # fmt: skip
    console.print(table)
    for connections in (1, 8):
        mine = result.get(f"fraudserve c{connections}")
        for baseline, what in (("feast serve", "requests/s"), ("constant FastAPI", "p50")):
            base = result.get(f"{baseline} c{connections}")
            if not isinstance(mine, dict) or not isinstance(base, dict):
                continue
            if what == "requests/s":
                ratio = mine["rps"] / base["rps"]
                result[f"ratio rps vs feast serve c{connections}"] = ratio
                console.print(f"{connections} connection(s): fraudserve / feast serve = {ratio:.1f}x requests/s")
            else:
                ratio = mine["p50_ms"] / base["p50_ms"]
                result[f"ratio p50 vs constant c{connections}"] = ratio
                console.print(f"{connections} connection(s): fraudserve p50 / constant FastAPI p50 = {ratio:.2f}x")
    write_result(console, "api", result)


if __name__ == "__main__":
    main()
