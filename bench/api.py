"""Score by id against the stack's own ceiling and Feast's feature server, all in the same run on the same machine.

    python -m bench.api [--seconds 8] [--rounds 2] [--workers 2] [--client wrk|python] [--home DIR]

Builds (or reuses, `--home`) a small deployment (synthetic data, backfill, a trained model, materialize) on an
embedded redis-server, starts every server below side by side (`--workers` processes each) and loads each in turn
with Debian's `wrk` (or `--client python`: bench/load.py), in `--rounds` alternating rounds so that other work on the
machine hits every row alike; each row's figure is the median over rounds:
- fraudserve `POST /v1/fraud/score {"transaction_id"}` (`fraudserve serve`): 300 transactions drawn at random from
  all ingested ones (seeded), and the 300 most recent; 8 connections and 1; with the score log on (sample 1.0, the
  default) and off (sample 0);
- the same app with FastAPI's route instead of the lean one (routes/fast_score.py), as before the lean route;
- the constant endpoint (bench/constant_app.py: a pydantic body in, a response of the same shape out, on the same
  uvicorn): the ceiling of the stack;
- `feast serve` `POST /get-online-features`: `fraud_v2` (its pandas on-demand view included) and only the stored
  features of `fraud_v1`, for the same transactions' entities (features only: no model, no transaction lookup);
- fraudserve on a user-declared feature service (`fraud_v3` of tests/integration/test_user_service.py: card
  features, a batch view of the risk team's merchant scores over a Parquet table, a python-mode on-demand view of
  it and the amount): a second deployment under `<home>/user` with its own redis-server (both counted in its CPU),
  300 of its transactions drawn at random, 8 connections.
`--baseline REV` adds fraudserve served from commit REV's files (`git archive`) side by side, random ids at 8
connections and at 1, and the ratios of this tree against it: a change to the HTTP layer (uvicorn's protocol, the
lean route) or the lookup measured end to end, in the same rounds.
Besides requests/s and latency it reads each server's CPU seconds per request (its processes and, for fraudserve,
redis-server's), which other load on the machine disturbs less than requests/s. Prints the table and the ratios of
the targets (bench/targets.py) and writes bench/results/api-<date>.json. The load generator shares the cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from bench.load import LoadResult, run_load
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


def embedded_store(stack: contextlib.ExitStack, home: Path | None, prefix: str) -> tuple[Path, Settings, str]:
    """The benchmark's folder (`home`, kept and reused by the next run, or a temporary one removed with `stack`), this
    process's settings pointing at it (FRAUDSERVE_HOME under it, FRAUDSERVE_REDIS unset) and the connection string of
    its embedded redis-server, stopped with `stack`."""
    root = home or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    os.environ["FRAUDSERVE_HOME"] = str(root / "home")
    os.environ.pop("FRAUDSERVE_REDIS", None)
    settings = Settings()
    connection = stack.enter_context(online_store(None, settings.embedded_redis_dir, settings.redis_server_bin))
    return root, settings, connection


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


def prepare_user_service(
    stack: contextlib.ExitStack, root: Path, cards: int, days: int, console: Console
) -> tuple[dict[str, str], list[str]]:
    """The user-declared-service deployment under `root` (reused when there): a copy of feature_repo/ with the
    integration test's `risk_views.py` (tests/integration/test_user_service.py), its data, backfill, materialized
    features and a model on `fraud_v3`, on an embedded redis-server of its own, stopped with `stack`. The variables
    its server needs and 300 of its transactions drawn at random."""
    from tests.integration.test_user_service import REPO, RISK_VIEWS, write_risk_table

    repo, marker = root / "feature_repo", root / "prepared.json"
    variables = {"FRAUDSERVE_HOME": str(root / "home"), "FRAUDSERVE_FEATURE_REPO": str(repo)}
    saved = {name: os.environ.get(name) for name in (*variables, "FRAUDSERVE_REDIS")}
    os.environ.update(variables)
    os.environ.pop("FRAUDSERVE_REDIS", None)
    try:
        settings = Settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)  # a build that did not finish
    connection = stack.enter_context(online_store(None, settings.embedded_redis_dir, settings.redis_server_bin))
    if not marker.exists():
        console.print(f"building the user-declared-service deployment under {root} ...")
        shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("__pycache__", "data", "*.db"))
        (repo / "risk_views.py").write_text(RISK_VIEWS)
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        generated = generate(root / "raw", GenerateConfig(seed=11, cards=cards, days=days, end=end))
        write_risk_table(
            settings.home_dir / "merchant_risk.parquet", generated.files["transactions_parquet"],
            end - timedelta(days=days),
        )  # fmt: skip
        feature_store.apply(settings, connection)
        backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
        store = feature_store.open_store(settings, connection)
        materialize(store, settings.offline)
        trained = train(build_training_set(store, "fraud_v3", settings.offline), TrainConfig(Flavor.lightgbm),
                        root / "pkg")  # fmt: skip
        open_registry(settings).register(trained.package, name="fraud", feature_service="fraud_v3")
        marker.write_text(json.dumps(random_ids(settings, SAMPLE)))
    return {**settings.feast_environment(connection), **variables}, json.loads(marker.read_text())


SAMPLE = 300  # transactions per id sample
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i %% #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK {"requests": %%d, "seconds": %%f, "non_2xx": %%d, "socket_errors": %%d, "p50_ms": %%f, "p99_ms": %%f}\\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def fastapi_route_app() -> Any:
    """fraudserve's app with FastAPI's route for the single score instead of the lean one (uvicorn --factory)."""
    from inference_api.app import create_app
    from inference_api.routes.fast_score import FastScore

    app = create_app()
    app.user_middleware = [m for m in app.user_middleware if getattr(m, "cls", None) is not FastScore]
    return app


def random_ids(settings: Settings, count: int, seed: int = 7) -> list[str]:
    """`count` transactions drawn at random from every ingested one (the offline store's transactions file)."""
    rows = duckdb.connect().execute(
        f"SELECT transaction_id FROM read_parquet('{settings.offline.transactions_file}') "
        f"USING SAMPLE {count} ROWS (reservoir, {seed})"
    )
    return [str(r[0]) for r in rows.fetchall()]


def stored_features(settings: Settings, connection: str, service: str) -> list[str]:
    """The features of a feature service that Feast reads from the online store (its on-demand views left out)."""
    store = feature_store.open_store(settings, connection)
    on_demand = {v.name for v in store.list_on_demand_feature_views()}
    return [
        f"{p.name_alias or p.name}:{f.name}"
        for p in store.get_feature_service(service).feature_view_projections
        if p.name not in on_demand
        for f in p.features
    ]


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def cpu_seconds(self, extra: Sequence[psutil.Process] = ()) -> float:
        """CPU seconds of the server's processes (the parent and its workers) and of `extra` ones, so far."""
        assert self.process is not None
        parent = psutil.Process(self.process.pid)
        total = 0.0
        for p in [parent, *parent.children(recursive=True), *extra]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total


@dataclass(frozen=True, eq=False)  # hashed by identity: a key of the figures
class Row:
    server: str
    sample: str  # which transactions (or request kind)
    path: str
    bodies: list[Any]
    connections: int


def load(client: str, port: int, row: Row, seconds: float, root: Path) -> LoadResult:
    if client == "python":
        return run_load("127.0.0.1", port, row.path, row.bodies, row.connections, seconds)
    lines = root / f"bodies-{abs(hash((row.server, row.sample)))}.jsonl"
    lines.write_text("".join(json.dumps(b) + "\n" for b in row.bodies))
    script = root / "wrk.lua"
    script.write_text(WRK_SCRIPT % lines)
    threads = min(row.connections, 2)
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{row.connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}{row.path}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = json.loads(done.stdout.split("WRK ", 1)[1])
    return WrkResult(found)


class WrkResult(LoadResult):
    """wrk's own figures in LoadResult's shape (requests/s, percentiles and errors as wrk counted them)."""

    def __init__(self, found: dict[str, float]) -> None:
        super().__init__(int(found["requests"]), int(found["non_2xx"] + found["socket_errors"]), found["seconds"],
                         np.array([]))  # fmt: skip
        self.found = found

    def pct(self, q: float) -> float:
        return float(self.found[f"p{q:g}_ms"])


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8, help="load per row and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each row's figure is the median")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of every server")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk")
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--top-reasons", type=int, default=3, help="FRAUDSERVE_TOP_REASONS for fraudserve (0: none)")
    parser.add_argument("--home", type=Path, help="keep the deployment here and reuse it on the next run")
    parser.add_argument("--only", action="append", help="start only this server (repeatable)")
    parser.add_argument("--baseline", metavar="REV", help="also serve commit REV's code, side by side")
    args = parser.parse_args()
    if args.client == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian's), or run with --client python")
    console = Console(width=160)
    result: dict[str, Any] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args),
                              "load_average_start": os.getloadavg()}  # fmt: skip
    with contextlib.ExitStack() as stack:
        root, settings, connection = embedded_store(stack, args.home, "fraudserve-bench-")
        env = {**os.environ, **settings.feast_environment(connection), "FRAUDSERVE_REDIS": connection,
               "FRAUDSERVE_TOP_REASONS": str(args.top_reasons)}  # fmt: skip
        recent_rows = prepare(root, settings, connection, args.cards, args.days, console)[:SAMPLE]
        samples = {"random": random_ids(settings, SAMPLE), "recent": [r[0] for r in recent_rows]}
        ours = {name: [{"transaction_id": t} for t in ids] for name, ids in samples.items()}
        entities = [
            {"transaction_id": [r[0]], "card_id": [r[1]], "merchant_id": [r[2]], "device_id": [r[3] or ""],
             "ip_address": [r[4] or ""]}
            for r in recent_rows
        ]  # fmt: skip
        stored_v1 = stored_features(settings, connection, "fraud_v1")
        feast_bodies = {
            "fraud_v2 (with its on-demand view)": [{"feature_service": "fraud_v2", "entities": e} for e in entities],
            "fraud_v1 stored features only": [{"features": stored_v1, "entities": e} for e in entities],
        }
        user_env, user_ids = prepare_user_service(stack, root / "user", args.cards, args.days, console)
        ours["user-declared service"] = [{"transaction_id": t} for t in user_ids]
        redis_pid = _redis_pid(connection)
        redis_pids = {"fraudserve, user-declared service": _redis_pid(user_env["FRAUDSERVE_REDIS"])}
        uvicorn = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                   "--log-level", "warning", "--workers", str(args.workers)]  # fmt: skip
        serve = [sys.executable, "-m", "fraudserve", "serve", "--workers", str(args.workers)]
        metrics_dir = root / "home" / "run" / "bench-fastapi-route"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        servers = [
            Server("fraudserve", serve, env),
            Server("fraudserve, score log off", serve, {**env, "FRAUDSERVE_SCORE_LOG_SAMPLE": "0"}),
            Server("fraudserve, FastAPI route (before)", [*uvicorn, "--factory", "bench.api:fastapi_route_app"],
                   {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "FRAUDSERVE_METRICS_MULTIPROCESS": "1"},
                   Path(__file__).parent.parent),
            Server("fraudserve, user-declared service", serve, {**env, **user_env}),
            Server("constant FastAPI", [*uvicorn, "bench.constant_app:app"], env, Path(__file__).parent.parent),
            Server("feast serve", [str(Path(sys.executable).parent / "feast"), "serve", "-w", str(args.workers)],
                   env, settings.feature_repo),
        ]  # fmt: skip
        servers = [s for s in servers if not args.only or s.name in args.only]
        if args.baseline:
            servers.append(Server(baseline_name(args.baseline), serve, without_pythonpath(env),
                                  extract(stack, args.baseline)))  # fmt: skip
        score = "/v1/fraud/score"
        rows: list[Row] = []
        for server in servers:
            if server.name == "feast serve":
                rows += [Row(server.name, k, "/get-online-features", v, 8) for k, v in feast_bodies.items()]
            elif server.name == "constant FastAPI":
                rows += [Row(server.name, "random", score, ours["random"], c) for c in (8, 1)]
            elif server.name == "fraudserve":
                rows += [Row(server.name, "random", score, ours["random"], 8), Row(server.name, "recent", score,
                         ours["recent"], 8), Row(server.name, "random", score, ours["random"], 1)]  # fmt: skip
            elif server.name == baseline_name(args.baseline):
                rows += [Row(server.name, "random", score, ours["random"], c) for c in (8, 1)]
            elif server.name == "fraudserve, user-declared service":
                rows.append(Row(server.name, "random", score, ours["user-declared service"], 8))
            else:
                rows.append(Row(server.name, "random", score, ours["random"], 8))
        try:
            for server in servers:
                server.port = free_port()
                log = (root / f"{server.name.replace(' ', '_').replace(',', '')}.log").open("w")
                command = [*server.command, "--port" if server.name != "feast serve" else "-p", str(server.port)]
                server.process = subprocess.Popen(command, env=server.env, cwd=server.cwd, stdout=log, stderr=log)
            by_name = {s.name: s for s in servers}
            for row in rows:  # every server answers 200 (all its workers started), then a short warm-up
                # all servers start at once: on 2 busy cores their imports (Feast: seconds each) take minutes
                wait_ready(f"http://127.0.0.1:{by_name[row.server].port}{row.path}", row.bodies[0], seconds=600)
                load(args.client, by_name[row.server].port, row, 1, root)
            figures: dict[Row, list[dict[str, float]]] = {row: [] for row in rows}
            for round_ in range(args.rounds):
                for row in rows:
                    server = by_name[row.server]
                    own = redis_pids.get(row.server, redis_pid)
                    extra = [psutil.Process(own)] if own and row.server.startswith("fraudserve") else []
                    cpu = server.cpu_seconds(extra)
                    outcome = load(args.client, server.port, row, args.seconds, root)
                    used = server.cpu_seconds(extra) - cpu
                    # negative: a worker was replaced during the load (gunicorn's, feast serve), its CPU lost: no figure
                    per_request = used * 1000 / max(outcome.requests, 1) if used >= 0 else float("nan")
                    figures[row].append({**outcome.summary(), "cpu_ms_per_request": per_request})
                    console.print(f"round {round_ + 1}: {row.server}, {row.sample}, c{row.connections}: "
                                  f"{outcome.rps:,.0f} req/s, p99 {outcome.pct(99):.2f} ms")  # fmt: skip
        finally:
            for server in servers:
                if server.process is not None:
                    server.process.terminate()
            for server in servers:
                if server.process is not None:
                    server.process.wait(timeout=60)
    result["load_average_end"] = os.getloadavg()
    table = Table(
        title=f"score by id: {args.workers} worker(s) per server, {os.cpu_count()} cores shared with the load "
        f"generator ({args.client}), median of {args.rounds} round(s) of {args.seconds:g} s"
    )
    for column in ("server", "transactions", "connections", "requests/s", "p50 ms", "p99 ms", "non-2xx", "CPU ms/req"):
        table.add_column(column, justify="right")
    for row, runs in figures.items():
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        median["errors"] = sum(r["errors"] for r in runs)
        result[f"{row.server} | {row.sample} | c{row.connections}"] = {**median, "rounds": runs}
        table.add_row(
            row.server, row.sample, str(row.connections), f"{median['rps']:,.0f}", f"{median['p50_ms']:.2f}",
            f"{median['p99_ms']:.2f}", str(int(median["errors"])), f"{median['cpu_ms_per_request']:.3f}",
        )  # fmt: skip
    console.print(table)
    result["ratios"] = ratios(result)
    if args.baseline:
        result["ratios"].update(baseline_ratios(result, baseline_name(args.baseline)))
    for name, value in result["ratios"].items():
        console.print(f"{name}: {value:.2f}")
    console.print(f"load average at the start {result['load_average_start']}, at the end {result['load_average_end']}")
    write_result(console, "api", result)


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The targets' ratios (bench/targets.py reads them back from the JSON)."""

    def get(key: str, field: str) -> float | None:
        found = result.get(key)
        return None if not isinstance(found, dict) else float(found[field])

    ours, recent = "fraudserve | random | c8", "fraudserve | recent | c8"
    before, log_off = "fraudserve, FastAPI route (before) | random | c8", "fraudserve, score log off | random | c8"
    constant = "constant FastAPI | random | c8"
    user = "fraudserve, user-declared service | random | c8"
    feast_v1 = "feast serve | fraud_v1 stored features only | c8"
    feast_v2 = "feast serve | fraud_v2 (with its on-demand view) | c8"
    rps, cpu = "rps", "cpu_ms_per_request"
    pairs = {
        "random c8 requests/s vs constant": ((ours, rps), (constant, rps)),
        "user-declared service c8 requests/s vs constant": ((user, rps), (constant, rps)),
        "one connection p50 vs constant": (
            ("fraudserve | random | c1", "p50_ms"),
            ("constant FastAPI | random | c1", "p50_ms"),
        ),
        "score log on vs off, requests/s": ((ours, rps), (log_off, rps)),
        "random vs recent transactions, requests/s": ((ours, rps), (recent, rps)),
        "random vs recent transactions, CPU per request": ((ours, cpu), (recent, cpu)),
        "lean route vs FastAPI route, requests/s": ((ours, rps), (before, rps)),
        "lean route vs FastAPI route, CPU per request": ((ours, cpu), (before, cpu)),
        "vs feast serve fraud_v1 stored features, requests/s": ((ours, rps), (feast_v1, rps)),
        "vs feast serve fraud_v2, requests/s": ((ours, rps), (feast_v2, rps)),
    }
    out: dict[str, float] = {}
    for name, ((key_a, field_a), (key_b, field_b)) in pairs.items():
        a, b = get(key_a, field_a), get(key_b, field_b)
        if a is not None and b:
            out[name] = a / b
    return out


def baseline_name(rev: str | None) -> str:
    return f"fraudserve at {rev}"


def extract(stack: contextlib.ExitStack, rev: str) -> Path:
    """Commit `rev`'s files in a temporary folder (removed with `stack`): `python -m fraudserve` run there imports
    that tree's packages before the installed (this tree's) ones."""
    base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraudserve-baseline-")))
    here = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "archive", rev], cwd=here, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(base, filter="data")
    return base


def without_pythonpath(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "PYTHONPATH"}


def baseline_ratios(result: dict[str, Any], name: str) -> dict[str, float]:
    """This tree's fraudserve against the baseline commit's, same rows, same rounds."""
    out: dict[str, float] = {}
    for label, row, field in (
        ("random c8 requests/s", "random | c8", "rps"),
        ("random c8 CPU per request", "random | c8", "cpu_ms_per_request"),
        ("one connection p50", "random | c1", "p50_ms"),
        ("one connection CPU per request", "random | c1", "cpu_ms_per_request"),
    ):
        ours, theirs = result.get(f"fraudserve | {row}"), result.get(f"{name} | {row}")
        if isinstance(ours, dict) and isinstance(theirs, dict) and theirs[field]:
            out[f"this tree vs baseline, {label}"] = float(ours[field]) / float(theirs[field])
    return out


def _redis_pid(connection: str) -> int | None:
    """The embedded redis-server's process (its CPU counts in fraudserve's CPU per request)."""
    port = connection.split(",", maxsplit=1)[0].rsplit(":", 1)[-1]
    for p in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if "redis-server" in (p.info["name"] or "") and any(f":{port}" in a for a in p.info["cmdline"] or []):
                return int(p.pid)
    return None


if __name__ == "__main__":
    main()
