"""What a data engineer's own features cost: 10 declared aggregations over 2 new entities against the built-in set
alone, and a `fraud_v3`-like service (a batch view, a python on-demand view) against `fraud_v1`, in one run.

    flock /tmp/fraudserve-bench.lock .venv/bin/python -m bench.user_features --rounds 3      # bench/README.md's
    .venv/bin/python -m bench.user_features --cards 10000 --days 7 --stream-cards 1500 \\
        --serve-cards 600 --serve-days 25 --seconds 4 --rounds 1                              # quick: < 3 minutes

Three Feast repos are written to a temporary folder the way a data engineer writes one (tests/user_repo.py: a copy of
feature_repo/ plus one `.py` file): the built-ins alone; the built-ins plus `bench_windows.py`, two
`StreamFeatureView`s of 6 and 4 `Aggregation`s over two new entities keyed by event fields (`merchant_category`,
`country`: count, sum, mean, min, max, count_distinct, fraud_rate, seconds_since_prev; windows of 10 minutes and
`--window-minutes`); and the built-ins plus `bench_v3.py`, a plain batch `FeatureView` over a Parquet table keyed by
merchant, a python-mode on-demand view over it and the transaction's amount, and a feature service `fraud_v3` of
`fraud_v1`'s features plus those two.

1. Backfill (embedded engine), same input, built-ins alone and with the 10 extra aggregations, `--rounds` rounds in
   alternating order (the fastest round of each is kept): transactions/s, the ratio, and the cost per declared
   feature, extra seconds per million transactions divided by 10.
2. Stream: the same events appended to a fresh redis-server for each repo, then drained by
   `fraudserve stream run --workers 1 --until-idle 1` (FRAUDSERVE_FEATURE_REPO set to the repo): events/s once the
   worker has started (the first acknowledged batch to an empty stream, polled every 50 ms), with the worker's CPU
   and Redis's per event over that span, and over the whole run with the process's start-up, as bench/stream.py
   counts it.
3. Score by id: one deployment of the v3 repo (real redis-server, `feast apply`, backfill, fast materialize, a
   LightGBM model trained on each service and registered as `fraud1` on `fraud_v1` and `fraud3` on `fraud_v3`), two
   `fraudserve serve` processes side by side (FRAUDSERVE_MODEL_NAME fraud1 and fraud3), driven by bench/load.py at 1
   and 8 connections, alternating the two in `--rounds` rounds; each configuration pools its rounds.

Prints the tables with the machine's core count and writes bench/results/user_features-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pandas as pd
from rich.console import Console

from bench.api import wait_ready
from bench.backfill_engines import inputs
from bench.cluster import pooled
from bench.load import LoadResult, run_load
from bench.pipeline import TRANSACTIONS_PER_CARD_DAY, StepRss, count
from bench.report import machine, print_table, write_result
from bench.stream import STREAM_COMMANDS, redis_usec
from core.embedded_redis import free_port, online_store
from core.models.manifest import Flavor
from core.settings import OfflineLayout, Settings
from fraudserve import feature_store
from fraudserve.registry import open_registry
from pipelines.features.catalog import load_catalog
from pipelines.generate import GenerateConfig, generate
from pipelines.materialize import materialize
from pipelines.offline.backfill import backfill
from pipelines.stream.log import RedisStreamLog
from pipelines.training.dataset import build_training_set
from pipelines.training.train import TrainConfig, train
from tests.redis_process import RedisProcess
from tests.user_repo import user_repo

EXTRA_FEATURES = 10
BUILTIN, EXTRA = "built-ins", "built-ins + 10"
SERVICES = {"fraud_v1": "fraud1", "fraud_v3": "fraud3"}  # feature service -> registered model
PATH = "/v1/fraud/score"


def extra_views(window_minutes: int) -> str:
    """The data engineer's file: 10 aggregations over two new entities keyed by event fields."""
    return f"""
from datetime import timedelta

from feast import Entity, Field, StreamFeatureView, ValueType
from feast.aggregation import Aggregation
from feast.types import Float64, Int64

from definitions import transactions_source

mcc = Entity(name="mcc", join_keys=["merchant_category"], value_type=ValueType.STRING)
country = Entity(name="country", join_keys=["country"], value_type=ValueType.STRING)
_10M, _W = timedelta(minutes=10), timedelta(minutes={window_minutes})


def _fields(aggregations):
    return [
        Field(name=a.name, dtype=Int64 if a.function in ("count", "count_distinct") else Float64)
        for a in aggregations
    ]


_mcc = [
    Aggregation(column="transaction_id", function="count", time_window=_10M, name="mcc_txn_count_10m"),
    Aggregation(column="transaction_id", function="count", time_window=_W, name="mcc_txn_count_w"),
    Aggregation(column="amount", function="sum", time_window=_W, name="mcc_amount_sum_w"),
    Aggregation(column="amount", function="mean", time_window=_W, name="mcc_amount_mean_w"),
    Aggregation(column="card_id", function="count_distinct", time_window=_W, name="mcc_cards_w"),
    Aggregation(column="is_fraud", function="fraud_rate", time_window=_W, name="mcc_fraud_rate_w"),
]
mcc_windows = StreamFeatureView(
    name="mcc_windows", source=transactions_source, entities=[mcc], ttl=timedelta(days=1),
    timestamp_field="event_timestamp", aggregations=_mcc, schema=_fields(_mcc), online=True,
)

_country = [
    Aggregation(column="transaction_id", function="count", time_window=_10M, name="country_txn_count_10m"),
    Aggregation(column="amount", function="max", time_window=_W, name="country_amount_max_w"),
    Aggregation(column="amount", function="min", time_window=_W, name="country_amount_min_w"),
    Aggregation(column="event_timestamp", function="seconds_since_prev", name="country_seconds_since_prev"),
]
country_windows = StreamFeatureView(
    name="country_windows", source=transactions_source, entities=[country], ttl=timedelta(days=1),
    timestamp_field="event_timestamp", aggregations=_country, schema=_fields(_country), online=True,
)
"""


# fraud_v1's features plus a batch view over the engineer's own Parquet table and a python on-demand view over it.
V3_VIEWS = """
import os
from datetime import timedelta
from pathlib import Path

from feast import FeatureService, FeatureView, Field, FileSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from definitions import (
    card_features, merchant, merchant_features, transaction_features, transaction_request_features,
)

_table = Path(os.environ.get("FRAUDSERVE_HOME", ".fraudserve")).expanduser().resolve() / "merchant_profile.parquet"

merchant_profile = FeatureView(
    name="merchant_profile",
    entities=[merchant],
    ttl=timedelta(days=365),
    schema=[Field(name="chargeback_ratio", dtype=Float64), Field(name="years_active", dtype=Int64)],
    source=FileSource(name="merchant_profile_source", path=str(_table), timestamp_field="updated_at"),
    online=True,
)


@on_demand_feature_view(
    sources=[merchant_profile, transaction_features[["amount"]]],
    schema=[Field(name="amount_x_chargeback", dtype=Float64), Field(name="new_merchant_large", dtype=Int64)],
    mode="python",
)
def merchant_risk(inputs: dict) -> dict:
    out = {"amount_x_chargeback": [], "new_merchant_large": []}
    for amount, ratio, years in zip(inputs["amount"], inputs["chargeback_ratio"], inputs["years_active"]):
        out["amount_x_chargeback"].append(amount * ratio if amount is not None and ratio is not None else None)
        out["new_merchant_large"].append(1 if years is not None and years < 2 and (amount or 0) > 200 else 0)
    return out


fraud_v3 = FeatureService(
    name="fraud_v3",
    features=[
        card_features, merchant_features, transaction_features[["amount"]], transaction_request_features,
        merchant_profile, merchant_risk,
    ],
)
"""


def write_merchant_profile(path: Path, transactions: Path, start: datetime) -> int:
    """One profile row per merchant of the transactions, dated before the first of them."""
    merchants = [
        str(r[0])
        for r in duckdb.connect()
        .execute(f"SELECT DISTINCT merchant_id FROM read_parquet('{transactions}') ORDER BY 1")
        .fetchall()
    ]
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(
        {
            "merchant_id": merchants,
            "updated_at": pd.Timestamp(start - timedelta(days=1)),
            "chargeback_ratio": rng.beta(1, 60, len(merchants)),
            "years_active": rng.integers(0, 25, len(merchants)),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False, coerce_timestamps="us", allow_truncated_timestamps=True)
    return len(merchants)


# ----------------------------------------------------------------------------------------------------- backfill
def backfill_part(
    console: Console, tmp: Path, repos: dict[str, Path], transactions: Path, labels: Path, rounds: int
) -> dict[str, Any]:
    catalogs = {name: load_catalog(repo) for name, repo in repos.items()}
    features = {name: len(c.window_features) for name, c in catalogs.items()}
    if features[EXTRA] - features[BUILTIN] != EXTRA_FEATURES:
        raise SystemExit(f"the extra repo declares {features[EXTRA] - features[BUILTIN]} features, not 10")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in repos}
    for index in range(rounds):
        for name in list(repos) if index % 2 == 0 else list(repos)[::-1]:
            stages: dict[str, float] = {}
            started = time.perf_counter()

            def progress(stage: str, fraction: float, stages: dict[str, float] = stages, t0: float = started) -> None:
                stages.setdefault(stage, time.perf_counter() - t0)

            folder = tmp / f"backfill-{features[name]}"
            with StepRss() as rss:
                summary = backfill(
                    transactions, labels, OfflineLayout(folder / "offline"), catalog=catalogs[name], progress=progress
                )
            shutil.rmtree(folder)
            features_s = summary.seconds - stages.get("computing features", 0.0)
            runs[name].append(
                {
                    "transactions": summary.transactions.read,
                    "seconds": summary.seconds,
                    "transactions_per_second": summary.transactions_per_second,
                    "features_seconds": features_s,
                    "rows_written": summary.rows_written,
                    "step_peak_rss_mb": rss.peak_mb,
                }
            )
            console.log(
                f"backfill round {index + 1}, {name}: {summary.transactions_per_second:,.0f} transactions/s "
                f"in {summary.seconds:.1f} s (features and files {features_s:.1f} s)"
            )
    best = {name: min(r, key=lambda run: run["seconds"]) for name, r in runs.items()}
    base, extra = best[BUILTIN], best[EXTRA]
    per_million = 1e6 / base["transactions"]
    return {
        "window_features": features,
        "rounds": runs,
        "best": best,
        "ratio_extra_to_builtin": extra["transactions_per_second"] / base["transactions_per_second"],
        "builtin_seconds_per_1m": base["seconds"] * per_million,
        "extra_seconds_per_1m": extra["seconds"] * per_million,
        "extra_seconds_per_1m_per_feature": (extra["seconds"] - base["seconds"]) * per_million / EXTRA_FEATURES,
        "builtin_features_seconds_per_1m_per_feature": base["features_seconds"] * per_million / features[BUILTIN],
    }


# ------------------------------------------------------------------------------------------------------- stream
def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and its descendants (from /proc), while they run."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, (parent, _) in stats.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return sum(stats[pid][1] for pid in tree if pid in stats)


def drain(tmp: Path, name: str, repo: Path, events: Path) -> dict[str, Any]:
    """Append the events to a fresh redis-server, then time one worker draining them with `repo`'s features.

    Once started: from the first acknowledged batch (polled every 50 ms) to an empty stream, with the worker
    processes' CPU (/proc) and Redis's (INFO commandstats) over that span; with start-up: the whole run, as
    bench/stream.py counts it."""
    server = RedisProcess(tmp / f"redis-{name}").start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
        env.update({"FRAUDSERVE_HOME": str(tmp / f"home-{name}"), "FRAUDSERVE_REDIS": server.connection_string,
                    "FRAUDSERVE_REDIS_TYPE": "redis", "FRAUDSERVE_FEATURE_REPO": str(repo)})  # fmt: skip
        fraudserve = [sys.executable, "-m", "fraudserve"]
        subprocess.run([*fraudserve, "stream", "produce", "--file", str(events)], env=env, check=True,
                       capture_output=True)  # fmt: skip
        client = server.client()
        log = RedisStreamLog(client)
        appended = log.lag()["length"]
        client.config_resetstat()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        output = tmp / f"worker-{name}.log"
        with output.open("w") as log_file:
            worker = subprocess.Popen([*fraudserve, "stream", "run", "--workers", "1", "--until-idle", "1"],
                                      env=env, stdout=log_file, stderr=subprocess.STDOUT)  # fmt: skip
        # (time, events left, worker CPU s, Redis us by command) at the first acknowledged batch and at the end
        marks: list[tuple[float, int, float, dict[str, float]]] = []
        while worker.poll() is None and len(marks) < 2:
            lag = log.lag()
            left = lag["lag"] + lag["pending"]
            if (not marks and left < appended) or (marks and left == 0):
                marks.append((time.perf_counter(), left, tree_cpu_seconds(worker.pid), redis_usec([client])))
            time.sleep(0.05)
        if worker.wait() != 0:
            raise RuntimeError(f"stream run failed: {output.read_text()[-2000:]}")
        seconds = time.perf_counter() - started - 1.0  # minus the idle wait that ends the run
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = redis_usec([client])
        info: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
        memory = int(info["used_memory"]) - int(info["used_memory_startup"])
    finally:
        server.stop()
    if len(marks) < 2:
        raise RuntimeError("the worker did not drain the stream while it was watched")
    (t0, steady_events, cpu0, redis0), (t1, _, cpu1, redis1) = marks
    steady = {k: v - redis0.get(k, 0.0) for k, v in redis1.items()}
    worker_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "events": appended,
        "seconds_with_startup": seconds,
        "events_per_second_with_startup": appended / seconds,
        "worker_cpu_us_per_event_with_startup": worker_cpu * 1e6 / appended,  # imports and catalog parse included
        "steady_events": steady_events,
        "steady_seconds": t1 - t0,
        "events_per_second": steady_events / (t1 - t0),
        "worker_cpu_us_per_event": (cpu1 - cpu0) * 1e6 / steady_events,
        "redis_us_per_event": sum(steady.values()) / steady_events,
        "redis_stream_us_per_event": sum(v for k, v in steady.items() if k in STREAM_COMMANDS) / steady_events,
        "redis_top_commands_us_per_event": {
            k: round(v / steady_events, 2) for k, v in sorted(steady.items(), key=lambda kv: -kv[1])[:6]
        },
        "redis_us_per_event_with_startup": sum(spent.values()) / appended,
        "redis_memory_bytes_per_event": memory / appended,
    }


def stream_part(console: Console, tmp: Path, repos: dict[str, Path], events: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for index, (name, repo) in enumerate(repos.items()):
        figures[name] = drain(tmp, f"stream-{index}", repo, events)
        f = figures[name]
        console.log(
            f"stream, {name}: {f['events']:,} events, {f['events_per_second']:,.0f} events/s once started "
            f"({f['events_per_second_with_startup']:,.0f}/s with start-up), worker CPU "
            f"{f['worker_cpu_us_per_event']:,.0f} us/event, Redis {f['redis_us_per_event']:.1f} us/event"
        )
    base, extra = figures[BUILTIN], figures[EXTRA]
    figures["ratio_extra_to_builtin"] = extra["events_per_second"] / base["events_per_second"]
    figures["ratio_extra_to_builtin_with_startup"] = (
        extra["events_per_second_with_startup"] / base["events_per_second_with_startup"]
    )
    # Seconds per million events, once started, per declared feature; and CPU per event per feature.
    figures["extra_seconds_per_1m_per_feature"] = (
        1e6 / extra["events_per_second"] - 1e6 / base["events_per_second"]
    ) / EXTRA_FEATURES
    figures["extra_worker_cpu_us_per_event_per_feature"] = (
        extra["worker_cpu_us_per_event"] - base["worker_cpu_us_per_event"]
    ) / EXTRA_FEATURES
    figures["extra_redis_us_per_event_per_feature"] = (
        extra["redis_us_per_event"] - base["redis_us_per_event"]
    ) / EXTRA_FEATURES
    return figures


# ------------------------------------------------------------------------------------------------ score by id
def deploy(console: Console, root: Path, settings: Settings, connection: str, cards: int, days: int) -> list[str]:
    """Data, the merchant table, apply, backfill, materialize, a model per service; the latest transaction ids."""
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    generated = generate(root / "raw", GenerateConfig(seed=3, cards=cards, days=days, end=end))
    merchants = write_merchant_profile(
        settings.home_dir / "merchant_profile.parquet", generated.files["transactions_parquet"], end - timedelta(days)
    )
    console.log(f"serving: {generated.transactions:,} transactions, {merchants:,} merchant profiles; feast apply")
    feature_store.apply(settings, connection)
    backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
    store = feature_store.open_store(settings, connection)
    summary = materialize(store, settings.offline)
    console.log(f"materialized {summary.rows:,} rows ({summary.engine}); training a model per service")
    registry = open_registry(settings)
    for service, model in SERVICES.items():
        started = time.perf_counter()
        training_set = build_training_set(store, service, settings.offline)
        built = time.perf_counter() - started
        trained = train(training_set, TrainConfig(Flavor.lightgbm, seed=1), root / model)
        registry.register(trained.package, name=model, feature_service=service)
        console.log(
            f"registered {model} on {service}: {len(trained.manifest.feature_names)} features, training set "
            f"{built:.1f} s, training {trained.seconds:.1f} s"
        )
    recent = (
        duckdb.connect()
        .execute(
            f"SELECT transaction_id FROM read_parquet('{settings.offline.transactions_file}') "
            "ORDER BY event_timestamp DESC LIMIT 2000"
        )
        .fetchall()
    )
    return [str(r[0]) for r in recent]


def serving_part(
    console: Console, root: Path, repo: Path, args: argparse.Namespace, stack: contextlib.ExitStack
) -> dict[str, Any]:
    os.environ["FRAUDSERVE_HOME"] = str(root / "home")
    os.environ["FRAUDSERVE_FEATURE_REPO"] = str(repo)
    os.environ["FRAUDSERVE_REDIS_TYPE"] = "redis"
    os.environ.pop("FRAUDSERVE_REDIS", None)
    settings = Settings()
    connection = stack.enter_context(online_store(None, settings.embedded_redis_dir, settings.redis_server_bin))
    ids = deploy(console, root, settings, connection, args.serve_cards, args.serve_days)
    bodies: list[dict[str, object]] = [{"transaction_id": i} for i in ids]
    ports: dict[str, int] = {}
    for service, model in SERVICES.items():
        port = ports[service] = free_port()
        log = stack.enter_context((root / f"serve-{model}.log").open("w"))
        process = subprocess.Popen(
            [sys.executable, "-m", "fraudserve", "serve", "--workers", str(args.workers), "--port", str(port)],
            env={**os.environ, **settings.feast_environment(connection), "FRAUDSERVE_MODEL_NAME": model},
            stdout=log,
            stderr=log,
        )
        stack.callback(process.wait, 30)
        stack.callback(process.terminate)
    checks: dict[str, Any] = {}
    started = time.perf_counter()
    for service, port in ports.items():
        wait_ready(f"http://127.0.0.1:{port}{PATH}", bodies[0])
        console.log(f"{service} answering after {time.perf_counter() - started:.1f} s")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            answers = [client.post(PATH, json=b).json() for b in bodies[:200]]
        checks[service] = {
            "models": sorted({f"{a['model']['name']} v{a['model']['version']}" for a in answers}),
            "uncertain": sum(bool(a["uncertain_reasons"]) for a in answers),
            "checked": len(answers),
        }
        console.log(f"{service}: {checks[service]}")
        run_load("127.0.0.1", port, PATH, bodies, 1, 2)  # warm-up
    result: dict[str, Any] = {"answers": checks, "load_average_before": os.getloadavg()}
    rounds: dict[tuple[str, int], list[LoadResult]] = {(s, c): [] for s in SERVICES for c in (1, 8)}
    for index in range(args.rounds):
        for connections in (1, 8):
            for service in list(SERVICES) if index % 2 == 0 else list(SERVICES)[::-1]:
                load = run_load("127.0.0.1", ports[service], PATH, bodies, connections, args.seconds)
                rounds[(service, connections)].append(load)
                console.log(
                    f"round {index + 1} {service} c{connections}: {load.rps:,.0f} requests/s, "
                    f"p50 {load.pct(50):.2f} ms, p99 {load.pct(99):.2f} ms, errors {load.errors}"
                )
    result["load_average_after"] = os.getloadavg()
    for connections in (1, 8):
        measured = {service: pooled(rounds[(service, connections)]) for service in SERVICES}
        for service, load in measured.items():
            result[f"{service} c{connections}"] = {
                **load.summary(),
                "rounds_rps": [r.rps for r in rounds[(service, connections)]],
            }
        v1, v3 = measured["fraud_v1"], measured["fraud_v3"]
        result[f"ratio v3 / v1 c{connections}"] = {
            "rps": v3.rps / v1.rps,
            "p50": v3.pct(50) / v1.pct(50),
            "p99": v3.pct(99) / v1.pct(99),
        }
    return result


# --------------------------------------------------------------------------------------------------------- main
def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=45_000, help="backfill input: cards (about 1 M transactions)")
    parser.add_argument("--days", type=int, default=14, help="backfill input: days")
    parser.add_argument("--transactions", type=count, help="size --cards for about this many transactions (1m)")
    parser.add_argument("--raw", type=Path, help="generate the backfill input into (or reuse) this folder")
    parser.add_argument("--window-minutes", type=int, default=60, help="the extra aggregations' longer window")
    parser.add_argument("--stream-cards", type=int, default=6000, help="stream events: cards over 3 days")
    parser.add_argument("--serve-cards", type=int, default=2000)
    parser.add_argument("--serve-days", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of each API server")
    parser.add_argument("--seconds", type=float, default=8, help="seconds per configuration per round")
    parser.add_argument("--rounds", type=int, default=2, help="backfill and load rounds, alternating the order")
    parser.add_argument("--skip", action="append", default=[], choices=["backfill", "stream", "serve"])
    args = parser.parse_args()
    if args.transactions:
        args.cards = max(1, round(args.transactions / (TRANSACTIONS_PER_CARD_DAY * args.days)))
    console = Console(width=160)
    result: dict[str, Any] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "arguments": dict(vars(args)),
        "load_average_at_start": os.getloadavg(),
        "extra_views": extra_views(args.window_minutes),
        "v3_views": V3_VIEWS,
    }
    saved = {k: v for k, v in os.environ.items() if k.startswith("FRAUDSERVE_")}
    for name in saved:
        del os.environ[name]  # never the caller's Redis, home or repo
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraudserve-bench-")))
        os.environ["FRAUDSERVE_HOME"] = str(tmp / "home")
        repos = {
            BUILTIN: user_repo(tmp / "repo-builtin" / "feature_repo", files={}, extra_fields={}),
            EXTRA: user_repo(
                tmp / "repo-extra" / "feature_repo",
                {"bench_windows.py": extra_views(args.window_minutes)},
                extra_fields={},
            ),
        }
        if "backfill" not in args.skip:
            transactions, labels, _ = inputs(args.raw or tmp / "raw", args.cards, args.days, console)
            result["backfill"] = backfill_part(console, tmp, repos, transactions, labels, args.rounds)
        if "stream" not in args.skip:
            generated = generate(
                tmp / "stream-raw",
                GenerateConfig(seed=9, cards=args.stream_cards, days=3, end=datetime(2026, 11, 1, tzinfo=UTC)),
            )
            result["stream"] = stream_part(console, tmp, repos, generated.files["transactions_parquet"])
        if "serve" not in args.skip:
            v3 = user_repo(tmp / "repo-v3" / "feature_repo", {"bench_v3.py": V3_VIEWS}, extra_fields={})
            with contextlib.ExitStack() as servers:
                result["serve"] = serving_part(console, tmp / "serve", v3, args, servers)
    for name in [k for k in os.environ if k.startswith("FRAUDSERVE_")]:
        del os.environ[name]
    os.environ.update(saved)
    report(console, result)
    write_result(console, "user_features", result)


def report(console: Console, result: dict[str, Any]) -> None:
    cores = os.cpu_count()
    rows: list[tuple[str, ...]] = []
    if "backfill" in result:
        b = result["backfill"]
        for name in (BUILTIN, EXTRA):
            run = b["best"][name]
            rows.append((f"backfill, {name} ({b['window_features'][name]} window features)",
                         f"{run['transactions']:,} transactions in {run['seconds']:.1f} s",
                         f"{run['transactions_per_second']:,.0f} transactions/s"))  # fmt: skip
        rows.append(("backfill, + 10 / built-ins", "transactions/s, same input, same run",
                     f"{b['ratio_extra_to_builtin']:.2f}x"))  # fmt: skip
        rows.append(("backfill, per declared feature", "extra seconds per 1 M transactions",
                     f"{b['extra_seconds_per_1m_per_feature']:.2f} s"))  # fmt: skip
    if "stream" in result:
        s = result["stream"]
        for name in (BUILTIN, EXTRA):
            f = s[name]
            rows.append((f"stream, 1 worker, {name}",
                         f"{f['events']:,} events; {f['worker_cpu_us_per_event']:,.0f} us worker CPU, "
                         f"{f['redis_us_per_event']:.0f} us Redis per event",
                         f"{f['events_per_second']:,.0f} events/s ({f['events_per_second_with_startup']:,.0f} "
                         "with start-up)"))  # fmt: skip
        rows.append(("stream, + 10 / built-ins", "events/s, same events, same run",
                     f"{s['ratio_extra_to_builtin']:.2f}x"))  # fmt: skip
        rows.append(("stream, per declared feature",
                     "extra seconds per 1 M events; worker CPU and Redis per event",
                     f"{s['extra_seconds_per_1m_per_feature']:.1f} s; "
                     f"{s['extra_worker_cpu_us_per_event_per_feature']:,.1f} us; "
                     f"{s['extra_redis_us_per_event_per_feature']:,.1f} us"))  # fmt: skip
    if rows:
        print_table(console, f"10 declared aggregations over 2 new entities, {cores} cores", ("what", "work", "figure"),
                    rows)  # fmt: skip
    if "serve" in result:
        serve = result["serve"]
        table: list[tuple[str, ...]] = []
        for connections in (1, 8):
            for service in SERVICES:
                load = serve[f"{service} c{connections}"]
                table.append((service, str(connections), f"{load['rps']:,.0f}", f"{load['p50_ms']:.2f}",
                              f"{load['p99_ms']:.2f}", str(load["errors"])))  # fmt: skip
            ratio = serve[f"ratio v3 / v1 c{connections}"]
            table.append(("v3 / v1", str(connections), f"{ratio['rps']:.2f}x", f"{ratio['p50']:.2f}x",
                          f"{ratio['p99']:.2f}x", ""))  # fmt: skip
        print_table(console, f"score by id, fraud_v3 (batch view + python ODFV) vs fraud_v1, {cores} cores",
                    ("service", "connections", "requests/s", "p50 ms", "p99 ms", "errors"), table)  # fmt: skip


if __name__ == "__main__":
    main()
