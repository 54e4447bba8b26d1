"""Where a score-by-id request's CPU time goes, stage by stage, in-process (no HTTP), at batch sizes 1 and 8.

    python -m bench.hotpath [--home DIR] [--iterations 2000]

Builds (or reuses, with --home) the deployment of bench.api and times, with the process's CPU clock, each stage of
`score_requests` on real transactions: the one-round-trip lookup (transaction + entity features), the two-round-trip
lookup it replaced, building the model matrix, predicting (compiled and native engines), the reasons (decision path
and TreeSHAP), the whole `score_requests` call and the response body.

Then the HTTP framework's own share (`--only http` for just this part): the real app (`create_app`, its lifespan run)
driven in-process through ASGI with its batcher replaced by one that answers a fixed score at once, so what is timed
is everything between the ASGI call and the scoring (middlewares, routing, auth, body parsing and validation, the
score log hand-off, the response body), in alternating rounds for: the lean route (routes/fast_score.py), the same
app without it (FastAPI's route, as before) and bench/constant_app.py. uvicorn's HTTP parsing and the socket calls
are not in it; bench.api measures those end to end. Writes bench/results/hotpath-<date>.json.

`--baseline REV`: instead, this tree's code against commit REV's in the same run: one process per tree (REV's
files from `git archive`), each with the real app (its lifespan run, score log on), driven in alternating rounds
through its batcher's scoring function (batch of one: `score_singles`, `score_requests` before it) and through the
whole ASGI app with its real batcher, on the same random ids
and the same redis-server; CPU per request of each process (all its threads) and of redis-server, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.api import embedded_store, prepare
from bench.report import machine, print_table, write_result
from core.settings import Settings


def _cpu_us(calls: int, fn: Callable[[int], Any]) -> float:
    started = time.process_time()
    for i in range(calls):
        fn(i)
    return (time.process_time() - started) / calls * 1e6


async def _acpu_us(calls: int, fn: Callable[[int], Any]) -> float:
    started = time.process_time()
    for i in range(calls):
        await fn(i)
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="reuse the deployment bench.api built here")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--only", choices=("http",), help="only the HTTP framework's share")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the HTTP part")
    parser.add_argument("--baseline", metavar="REV", help="this tree against commit REV, in alternating rounds")
    args = parser.parse_args()
    if args.baseline:
        _against_baseline(args)
        return
    console = Console()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat()}
    with contextlib.ExitStack() as stack:
        root, settings, connection = embedded_store(stack, args.home, "fraudserve-hotpath-")
        ids = [r[0] for r in prepare(root, settings, connection, args.cards, args.days, console)]
        settings.export_feast_environment(connection)
        os.environ["FRAUDSERVE_REDIS"] = connection
        http = asyncio.run(_http_layer(Settings(), ids, args.iterations, args.rounds))
        rows = [] if args.only == "http" else asyncio.run(_measure(settings, ids, args.iterations))
    result["http_layer_us_per_request"] = http
    print_table(
        console,
        f"HTTP framework CPU per score request, in-process ASGI, fixed score, median of {args.rounds} rounds",
        ("app", "us/request", "vs FastAPI route"),
        [(name, f"{us:,.1f}", f"{us / http['FastAPI route (before)']:.2f}x") for name, us in http.items()],
    )
    if not rows:
        write_result(console, "hotpath", result)
        return
    result["stages_us_per_request"] = {f"{stage} (batch {batch})": us for stage, batch, us in rows}
    print_table(
        console,
        f"CPU time per request by stage, in-process, {os.cpu_count()} cores",
        ("stage", "batch 1, us/request", "batch 8, us/request"),
        [
            (stage, f"{dict(((s, b), u) for s, b, u in rows)[(stage, 1)]:,.1f}",
             f"{dict(((s, b), u) for s, b, u in rows)[(stage, 8)]:,.1f}")
            for stage in dict.fromkeys(s for s, _, _ in rows)
        ],
    )  # fmt: skip
    write_result(console, "hotpath", result)


def _scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2), "state": {},
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip


async def _asgi_call(app: Any, body: bytes) -> int:
    """One POST /v1/fraud/score through the app's ASGI interface; its status."""
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(_scope("/v1/fraud/score", body), receive, send)
    return int(sent[0]["status"])


def _call_nth(app: Any, bodies: list[bytes], i: int) -> Any:
    return _asgi_call(app, bodies[i % len(bodies)])


class _FixedScore:
    """A batcher that answers one precomputed score at once: the scoring is out of the HTTP layer's figure."""

    def __init__(self, score: Any) -> None:
        self.score = score

    async def submit(self, request: Any) -> Any:
        return self.score


async def _http_layer(settings: Settings, ids: list[str], calls: int, rounds: int) -> dict[str, float]:
    import statistics

    from bench.constant_app import app as constant
    from inference_api.app import create_app
    from inference_api.routes.fast_score import FastScore

    lean = create_app(settings)
    plain = create_app(settings)
    plain.user_middleware = [m for m in plain.user_middleware if getattr(m, "cls", None) is not FastScore]
    lifespans = [lean.router.lifespan_context(lean), plain.router.lifespan_context(plain)]
    for context in lifespans:
        await context.__aenter__()
    try:
        bodies = [json.dumps({"transaction_id": t}).encode() for t in ids]
        answers = await lean.state.batcher.submit((ids[0], None)), await plain.state.batcher.submit((ids[0], None))
        lean.state.batcher, plain.state.batcher = _FixedScore(answers[0]), _FixedScore(answers[1])
        apps = {
            "lean route (routes/fast_score.py)": lean,
            "FastAPI route (before)": plain,
            "constant FastAPI": constant,
        }
        for app in apps.values():  # warm-up, and every app answers 200
            statuses = {await _asgi_call(app, bodies[i % len(bodies)]) for i in range(200)}
            if statuses != {200}:
                raise RuntimeError(f"the app answered {statuses} to score requests")
        figures: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(rounds):
            for name, app in apps.items():
                figures[name].append(await _acpu_us(calls, functools.partial(_call_nth, app, bodies)))
        return {name: statistics.median(values) for name, values in figures.items()}
    finally:
        for context in lifespans:
            await context.__aexit__(None, None, None)


async def _measure(settings: Settings, ids: list[str], calls: int) -> list[tuple[str, int, float]]:
    from feast import FeatureStore

    from core.models.attribution import RuntimeExplainer
    from core.models.runtime import load_runtime
    from fraudserve.registry import open_registry
    from inference_api.domain.models import ModelManager
    from inference_api.domain.redis_source import RedisFeatureSource
    from inference_api.domain.scoring import ScoringService
    from inference_api.observability import Metrics

    store = FeatureStore(repo_path=str(settings.feature_repo))
    source = RedisFeatureSource(store, 1.0)
    manager = ModelManager(open_registry(settings, check_features=False), store, settings.model_name)
    manager.refresh()
    model = manager.production()
    service = ScoringService(source, manager, Metrics())
    native = load_runtime(model.manifest.flavor, manager.registry.model_path(model.name, model.version))
    rows: list[tuple[str, int, float]] = []
    for batch in (1, 8):
        stages = await _stages(batch, ids, calls, source, service, model, native, RuntimeExplainer(native))
        rows.extend((stage, batch, us / batch) for stage, us in stages)
    await source.close()
    return rows


async def _stages(
    batch: int, ids: list[str], calls: int, source: Any, service: Any, model: Any, native: Any, shap: Any
) -> list[tuple[str, float]]:
    from inference_api.domain.scoring import Score, build_rows, score_requests
    from inference_api.routes.fraud import score_body

    window = len(ids) - 8

    def chunk(i: int) -> list[str]:
        start = (i * batch) % window
        return ids[start : start + batch]

    records = [r for r in await source.transactions(chunk(0), model.plan) if r is not None]
    fetched = [r.views or {} for r in records]
    matrix, _, _ = build_rows(model.plan, records, fetched, time.time())
    scores = [s for s in await score_requests(service, [(i, None) for i in chunk(0)]) if isinstance(s, Score)]

    async def fused(i: int) -> Any:
        return await source.transactions(chunk(i), model.plan)

    async def two_trips(i: int) -> Any:
        found = [r for r in await source.transactions(chunk(i)) if r is not None]
        return await source.views(model.plan, found)

    async def whole(i: int) -> Any:
        return await score_requests(service, [(t, None) for t in chunk(i)])

    async def columnar(i: int) -> Any:  # score:batch's path, on the same ids
        return await service.score_columns(chunk(i), model, "production")

    return [
        ("lookup, one round trip (Lua)", await _acpu_us(calls, fused)),
        ("lookup, two round trips (before)", await _acpu_us(calls, two_trips)),
        ("build model matrix", _cpu_us(calls, lambda i: build_rows(model.plan, records, fetched, time.time()))),
        (f"predict, {type(model.runtime).__name__}", _cpu_us(calls, lambda i: model.predict(matrix))),
        ("predict, native (before)", _cpu_us(calls, lambda i: native.predict(matrix))),
        ("reasons, decision path", _cpu_us(calls, lambda i: model.explainer.contributions(matrix))),
        ("reasons, TreeSHAP (before)", _cpu_us(max(calls // 20, 20), lambda i: shap.contributions(matrix))),
        ("score_requests (record path), all of the above", await _acpu_us(calls, whole)),
        ("the same by score:batch's columnar path", await _acpu_us(calls, columnar)),
        ("response body (JSON)", _cpu_us(calls, lambda i: [json.dumps(score_body(s)) for s in scores])),
    ]


# One tree's side of `--baseline`, run with that tree as the working directory (`python -c`), so it imports only
# what both trees have: the app, its lifespan and its batcher's `score_many`. Reads "score N" / "asgi N" lines,
# answers with the process's CPU microseconds per call (every thread: the score log's writer too).
_SIDE = """
import asyncio, json, os, sys, time, warnings
warnings.filterwarnings("ignore")
import uvloop
from core.settings import Settings
from inference_api.app import create_app
ids = json.loads(sys.argv[1])
bodies = [json.dumps({"transaction_id": t}).encode() for t in ids]

async def asgi(app, body):
    sent = []
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    async def send(message):
        sent.append(message)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/fraud/score", "raw_path": b"/v1/fraud/score", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "state": {},
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent

async def main():
    app = create_app(Settings())
    async with app.router.lifespan_context(app):
        score_many = app.state.batcher.score_many  # what the tree's batcher scores with (score_requests before)
        for i in range(300):
            await asgi(app, bodies[i % len(bodies)])
        print("ready", flush=True)
        for line in sys.stdin:
            kind, calls = line.split()
            started = time.process_time()
            for i in range(int(calls)):
                if kind == "score":
                    await score_many([(ids[i % len(ids)], None)])
                else:
                    await asgi(app, bodies[i % len(bodies)])
            print((time.process_time() - started) / int(calls) * 1e6, flush=True)

uvloop.install()
asyncio.run(main())
"""


def _against_baseline(args: argparse.Namespace) -> None:
    import psutil

    from bench.api import _redis_pid, random_ids

    console = Console()
    result: dict[str, Any] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args),
                              "load_average_start": os.getloadavg()}  # fmt: skip
    here = Path(__file__).resolve().parent.parent
    with contextlib.ExitStack() as stack:
        root, settings, connection = embedded_store(stack, args.home, "fraudserve-hotpath-")
        prepare(root, settings, connection, args.cards, args.days, console)
        ids = random_ids(settings, 300)
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraudserve-baseline-")))
        archive = subprocess.run(["git", "archive", args.baseline], cwd=here, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(base, filter="data")
        env = {**os.environ, **settings.feast_environment(connection), "FRAUDSERVE_REDIS": connection}
        env.pop("PYTHONPATH", None)
        sides: dict[str, subprocess.Popen[str]] = {}
        for name, tree in ((f"baseline {args.baseline}", base), ("this tree", here)):
            process = subprocess.Popen(
                [sys.executable, "-c", _SIDE, json.dumps(ids)], cwd=tree, env=env, text=True, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            stack.callback(process.kill)
            sides[name] = process
        for name, process in sides.items():
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {name} process did not start (run it by hand to see why)")
        redis = psutil.Process(_redis_pid(connection))
        figures: dict[str, list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            for kind in ("score", "asgi"):
                for name, process in sides.items():
                    assert process.stdin is not None and process.stdout is not None
                    before = sum(redis.cpu_times()[:2])
                    process.stdin.write(f"{kind} {args.iterations}\n")
                    process.stdin.flush()
                    us = float(process.stdout.readline())
                    redis_us = (sum(redis.cpu_times()[:2]) - before) / args.iterations * 1e6
                    figures.setdefault(f"{name} | {kind}", []).append((us, redis_us))
                    console.print(f"round {round_ + 1}, {kind}, {name}: {us:,.0f} us (redis-server {redis_us:,.0f})")
    result["load_average_end"] = os.getloadavg()
    rows = []
    for key, runs in figures.items():
        us, redis_us = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        result[key] = {"us_per_request": us, "redis_us_per_request": redis_us, "rounds": runs}
        rows.append((*key.split(" | "), f"{us:,.0f}", f"{redis_us:,.0f}"))
    print_table(console, f"CPU per single score, median of {args.rounds} alternating rounds of {args.iterations}",
                ("code", "through", "process us/request", "redis-server us/request"), rows)  # fmt: skip
    ratios = {}
    for kind in ("score", "asgi"):
        old, new = result[f"baseline {args.baseline} | {kind}"], result[f"this tree | {kind}"]
        ratios[f"{kind}: this tree / baseline, process CPU"] = new["us_per_request"] / old["us_per_request"]
        ratios[f"{kind}: this tree / baseline, process + redis CPU"] = (
            new["us_per_request"] + new["redis_us_per_request"]
        ) / (old["us_per_request"] + old["redis_us_per_request"])
    result["ratios"] = ratios
    for name, value in ratios.items():
        console.print(f"{name}: {value:.3f}")
    console.print(f"load average at the start {result['load_average_start']}, at the end {result['load_average_end']}")
    write_result(console, "hotpath", result)


if __name__ == "__main__":
    main()
