"""`POST /v1/fraud/score:batch` by id against the same model on the same rows sent over OIP v2, in one run.

    flock /tmp/fraudserve-bench.lock python -m bench.score_batch [--home DIR] [--rounds 3] [--baseline REV]
        [--baseline-env NAME=VALUE ...]

Builds (or reuses, with `--home`) bench.api's deployment (synthetic data, backfill, a trained LightGBM model on
fraud_v2, materialized features, an embedded redis-server) and starts `fraudserve serve` with one worker and
FRAUDSERVE_MAX_BATCH=1000. Then, one closed-loop connection at a time:
- by id: `score:batch` with 256 (and 1,000) random ingested ids per request, a new sample each request; the API
  looks up the transactions, fetches their features, predicts, explains and labels;
- the baseline: `/v2/models/fraud/infer` with the same model on 256 (and 1,000) feature rows sent in the request
  (Feast's online features of those ids, read once before), which only parses the tensor and predicts.
The two alternate in `--rounds` rounds of `--seconds` each, so that other work on the machine weighs on both; the
ratio is by-id p50 / OIP p50 (the target: at most 1.5x at 256 ids, and cost growing linearly to 1,000).
It also checks that every item of a 256-id batch equals the single score of its id (score, label, reasons), and
runs the saturation case: `--clients` concurrent clients sending 256-id batches for `--saturation-seconds`,
counting the answers by status and error code (the target: only 200 and 503 `overloaded` with Retry-After).
`--baseline REV` serves the same by-id batches (and OIP requests, so that both servers' score logs write the same
mix of rows in the same rounds) from commit REV's code; `--baseline-env` sets
variables for that server only, so `--baseline HEAD --baseline-env FRAUDSERVE_SCORE_LOG_SAMPLE=0` measures what
one setting costs (here the score log) on the same code.
Writes bench/results/score_batch-<date>.json with the load average at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console

from bench.api import embedded_store, prepare, wait_ready
from bench.load import run_load
from bench.report import machine, print_table, write_result
from core.embedded_redis import free_port
from core.settings import Settings
from fraudserve import feature_store

SIZES = (256, 1000)


def feature_rows(
    settings: Settings, connection: str, ids: list[str], names: list[str]
) -> dict[str, list[float | None]]:
    """Each id's model row as Feast's SDK reads it (the OIP baseline's input): id -> values in manifest order."""
    store = feature_store.open_store(settings, connection)
    keys = ("card_id", "merchant_id", "device_id", "ip_address")
    found = store.get_online_features(
        features=[f"transaction_features:{k}" for k in keys], entity_rows=[{"transaction_id": t} for t in ids]
    ).to_dict()
    rows = [{"transaction_id": t, **{k: found[k][i] or "" for k in keys}} for i, t in enumerate(ids)]
    online = store.get_online_features(features=store.get_feature_service("fraud_v2"), entity_rows=rows).to_dict()
    return {t: [online[n][i] for n in names] for i, t in enumerate(ids)}


def oip_body(rows: list[list[float | None]]) -> dict[str, object]:
    flat = [v for row in rows for v in row]
    return {"inputs": [{"name": "features", "shape": [len(rows), len(rows[0])], "datatype": "FP32", "data": flat}]}


def exactness(url: str, ids: list[str]) -> dict[str, int]:
    """Items of one batch against the single score of each id: equal (score, label, reasons, version) and in order."""
    with httpx.Client(base_url=url, timeout=60) as http:
        batch = http.post("/v1/fraud/score:batch", json={"items": [{"transaction_id": t} for t in ids]})
        batch.raise_for_status()
        results = batch.json()["results"]
        equal = 0
        for transaction_id, item in zip(ids, results, strict=True):
            single = http.post("/v1/fraud/score", json={"transaction_id": transaction_id}).json()
            mine = item["result"]
            if (
                item["transaction_id"] == transaction_id
                and mine is not None
                and all(mine[k] == single[k] for k in ("score", "label", "reasons", "model", "uncertain_reasons"))
            ):
                equal += 1
    return {"items": len(ids), "equal_to_single": equal}


def saturation(url: str, ids: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """`clients` concurrent clients, each sending 256-id batches back to back: answers by status and code."""
    counts: collections.Counter[str] = collections.Counter()
    retry_after: list[int] = []
    latencies: list[float] = []

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            until = time.perf_counter() + seconds
            while time.perf_counter() < until:
                body = {"items": [{"transaction_id": t} for t in rng.sample(ids, 256)]}
                started = time.perf_counter()
                response = await http.post("/v1/fraud/score:batch", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code == 200:
                    counts["200"] += 1
                    continue
                code = response.json().get("error", {}).get("code", "?")
                counts[f"{response.status_code} {code}"] += 1
                if "retry-after" in response.headers:
                    retry_after.append(int(response.headers["retry-after"]))

    async def main() -> None:
        await asyncio.gather(*(client(i) for i in range(clients)))

    asyncio.run(main())
    refused = sum(n for k, n in counts.items() if k != "200")
    return {
        "clients": clients,
        "seconds": seconds,
        "answers": dict(counts),
        "refused_with_retry_after": len(retry_after),
        "refused": refused,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
    }


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def redis_time(
    settings: Settings, port: int, connection: str, bodies: list[dict[str, object]], seconds: float
) -> dict[str, Any]:
    """Redis's own time per `score:batch` request (INFO commandstats over a by-id load): the store's share of it."""
    from core.connections import redis_client

    client = redis_client(settings, connection)
    client.config_resetstat()
    load = run_load("127.0.0.1", port, "/v1/fraud/score:batch", bodies, 1, seconds)
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    # A script's own time includes the commands it calls, which are also counted under their own names; without
    # scripts (the batch lookup's plain pipelined HMGETs) every command counted is the requests' own.
    scripts = sum([float(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")])
    usec = scripts or sum(float(v["usec"]) for v in stats.values())
    commands = {k.removeprefix("cmdstat_"): {"calls": int(v["calls"]), "usec": float(v["usec"])} for k, v in
                stats.items()}  # fmt: skip
    return {"requests": load.requests, "redis_us_per_request": usec / max(load.requests, 1), "commands": commands,
            "p50_ms": float(np.percentile(load.latencies_ms, 50)) if load.requests else None}  # fmt: skip


def model_alone(settings: Settings, rows: list[list[float | None]], iterations: int = 200) -> dict[str, float]:
    """The served model's predict and reasons on the batch's rows in this process (the API's engine and explainer),
    apart and from one walk of the trees: what the model alone costs per batch, median microseconds."""
    from core.models.attribution import make_explainer
    from core.models.manifest import Flavor
    from core.models.runtime import load_runtime, model_engine
    from fraudserve.registry import open_registry

    registry = open_registry(settings)
    path = registry.model_path("fraud", registry.get("fraud").version)
    runtime = load_runtime(Flavor.lightgbm, path, engine=model_engine())
    explainer = make_explainer(settings.reasons_method, Flavor.lightgbm, path, runtime)
    matrix = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
    compiled = getattr(explainer, "compiled", None) is not None
    out: dict[str, float] = {"rows": float(len(matrix)), "compiled_reasons": float(compiled)}
    calls = [("predict_us", runtime.predict), ("reasons_us", explainer.contributions)]
    both = getattr(explainer, "predict_and_explain", None)
    if both is not None and both(matrix) is not None:  # score:batch's one walk for both
        calls.append(("predict_and_reasons_us", both))
    for name, call in calls:
        call(matrix)
        times = []
        for _ in range(iterations):
            started = time.perf_counter()
            call(matrix)
            times.append(time.perf_counter() - started)
        out[name] = float(np.median(times) * 1e6)
    return out


def profile(py_spy: str, pid: int, port: int, bodies: list[dict[str, object]], seconds: float) -> dict[str, Any]:
    """py-spy on the API process during a by-id load: each function's share of the samples (inclusive: the samples
    with it on the stack): the project's top 25 functions and the top 20 others below the common wrappers."""
    import re

    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--output",
                                out.name, "--duration", str(int(seconds))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(1)
        run_load("127.0.0.1", port, "/v1/fraud/score:batch", bodies, 1, seconds - 1)
        spy.wait(seconds + 30)
        lines = Path(out.name).read_text().splitlines()
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()  # the frame running (its line), the caller beside it
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        named = [frame.replace(str(Path.cwd()) + "/", "") for frame in stack.split(";")]
        for frame in {re.sub(r":\d+\)$", ")", frame) for frame in named}:
            inclusive[frame] += int(n)
        leaves[" < ".join(reversed(named[-2:]))] += int(n)
    share = {frame: round(n / max(total, 1), 4) for frame, n in inclusive.most_common()}
    ours = [f for f in share if f.split("(", 1)[-1].startswith(("inference_api/", "core/", "pipelines/"))]
    theirs = [f for f in share if f not in ours and share[f] < 0.45]  # below the stack's common wrappers
    return {"samples": total, "inclusive_share": {f: share[f] for f in [*ours[:25], *theirs[:20]]},
            "self_share": {f: round(n / max(total, 1), 4) for f, n in leaves.most_common(40)}}  # fmt: skip


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3, help="per measurement and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the saturation run")
    parser.add_argument("--saturation-seconds", type=float, default=10)
    parser.add_argument("--home", type=Path, help="keep the deployment here and reuse it on the next run")
    parser.add_argument("--baseline", help="a commit whose code serves the same by-id batches in the same run")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable of the baseline's server only (repeatable)")  # fmt: skip
    parser.add_argument("--py-spy", help="py-spy binary: also profile the API process under the 256-id load")
    args = parser.parse_args()
    if bad := [item for item in args.baseline_env if "=" not in item]:
        parser.error(f"--baseline-env takes NAME=VALUE, not {bad[0]!r}")
    console = Console(width=150)
    result: dict[str, Any] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    result["load_average_at_start"] = os.getloadavg()
    with contextlib.ExitStack() as stack:
        root, settings, connection = embedded_store(stack, args.home, "fraudserve-bench-")
        recent = prepare(root, settings, connection, args.cards, args.days, console)
        ids = [r[0] for r in recent]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (root / "score_batch-api.log").open("w")
        env = {**os.environ, **settings.feast_environment(connection), "FRAUDSERVE_REDIS": connection,
               "FRAUDSERVE_MAX_BATCH": "1000"}  # fmt: skip
        command = [sys.executable, "-m", "fraudserve", "serve", "--workers", "1", "--port", str(port)]
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        stack.callback(process.wait, 30)
        stack.callback(process.terminate)
        wait_ready(f"{url}/v1/fraud/score", {"transaction_id": ids[0]})
        baseline_port = None
        if args.baseline:  # the same server from commit REV's code, on the same store, loaded in turn
            from bench.stream import baseline_tree

            tree = baseline_tree(Path(stack.enter_context(tempfile.TemporaryDirectory())), args.baseline)
            baseline_port = free_port()
            command = [sys.executable, "-m", "fraudserve", "serve", "--workers", "1", "--port", str(baseline_port)]
            extra = dict(item.split("=", 1) for item in args.baseline_env)
            other = subprocess.Popen(command, env={**env, **extra}, stdout=log, stderr=log, cwd=tree)
            stack.callback(other.wait, 30)
            stack.callback(other.terminate)
            wait_ready(f"http://127.0.0.1:{baseline_port}/v1/fraud/score", {"transaction_id": ids[0]})
        names = httpx.get(f"{url}/v2/models/fraud").json()["parameters"]["features"]
        rows = feature_rows(settings, connection, ids, names)
        rng = random.Random(7)
        bodies: dict[str, list[dict[str, object]]] = {}
        for size in SIZES:
            samples = [rng.sample(ids, size) for _ in range(40)]
            bodies[f"by id {size}"] = [{"items": [{"transaction_id": t} for t in s]} for s in samples]
            bodies[f"oip {size}"] = [oip_body([rows[t] for t in s]) for s in samples]
            if baseline_port is not None:  # its OIP rounds too: each server's score log writes the same mix of rows
                bodies[f"baseline by id {size}"] = bodies[f"by id {size}"]
                bodies[f"baseline oip {size}"] = bodies[f"oip {size}"]
        paths = {
            "by id": "/v1/fraud/score:batch",
            "oip": "/v2/models/fraud/infer",
            "baseline by id": "/v1/fraud/score:batch",
            "baseline oip": "/v2/models/fraud/infer",
        }

        def port_of(name: str) -> int:
            return baseline_port if baseline_port is not None and name.startswith("baseline") else port

        servers = {port: process.pid, **({baseline_port: other.pid} if baseline_port is not None else {})}
        cpu_s: dict[str, float] = dict.fromkeys(bodies, 0.0)

        latencies: dict[str, list[np.ndarray]] = {name: [] for name in bodies}
        errors: dict[str, int] = dict.fromkeys(bodies, 0)
        for name, sample in bodies.items():  # warm-up
            run_load("127.0.0.1", port_of(name), paths[name.rsplit(" ", 1)[0]], sample, 1, 1)
        for _ in range(args.rounds):
            for name, sample in bodies.items():
                before = tree_cpu(servers[port_of(name)])
                load = run_load("127.0.0.1", port_of(name), paths[name.rsplit(" ", 1)[0]], sample, 1, args.seconds)
                cpu_s[name] += tree_cpu(servers[port_of(name)]) - before
                latencies[name].append(load.latencies_ms)
                errors[name] += load.errors
        table = []
        for size in SIZES:
            mine = np.concatenate(latencies[f"by id {size}"])
            base = np.concatenate(latencies[f"oip {size}"])
            p50, base50 = float(np.percentile(mine, 50)), float(np.percentile(base, 50))
            result[f"by id {size}"] = {
                "requests": len(mine),
                "errors": errors[f"by id {size}"],
                "p50_ms": p50,
                "p99_ms": float(np.percentile(mine, 99)),
                "us_per_id": p50 * 1000 / size,
                "server_cpu_ms_per_request": cpu_s[f"by id {size}"] * 1000 / max(len(mine), 1),
            }
            result[f"oip {size}"] = {
                "requests": len(base),
                "errors": errors[f"oip {size}"],
                "p50_ms": base50,
                "p99_ms": float(np.percentile(base, 99)),
                "server_cpu_ms_per_request": cpu_s[f"oip {size}"] * 1000 / max(len(base), 1),
            }
            result[f"ratio p50 by id / oip {size}"] = p50 / base50
            if baseline_port is not None:
                old = np.concatenate(latencies[f"baseline by id {size}"])
                old50 = float(np.percentile(old, 50))
                old_cpu = cpu_s[f"baseline by id {size}"] * 1000 / max(len(old), 1)
                old_oip = float(np.percentile(np.concatenate(latencies[f"baseline oip {size}"]), 50))
                result[f"baseline by id {size}"] = {"rev": args.baseline, "env": args.baseline_env,
                                                    "requests": len(old), "p50_ms": old50,
                                                    "errors": errors[f"baseline by id {size}"],
                                                    "server_cpu_ms_per_request": old_cpu,
                                                    "oip_p50_ms": old_oip}  # fmt: skip
                result[f"ratio p50 by id / baseline {size}"] = p50 / old50
                new_cpu = result[f"by id {size}"]["server_cpu_ms_per_request"]
                console.print(f"{size} ids: p50 {p50:.2f} ms against {old50:.2f} ms with {args.baseline}'s code "
                              f"({p50 / old50:.2f}x), {old50 / base50:.2f}x OIP then; the API's CPU per request "
                              f"{new_cpu:.2f} against {old_cpu:.2f} ms ({new_cpu / old_cpu:.2f}x)")  # fmt: skip
            table.append((str(size), f"{base50:.2f} ms", f"{p50:.2f} ms", f"{p50 * 1000 / size:.1f} us",
                          f"{p50 / base50:.2f}x", f"{errors[f'by id {size}']} / {errors[f'oip {size}']}"))  # fmt: skip
        result["growth p50 1000 / 256"] = result["by id 1000"]["p50_ms"] / result["by id 256"]["p50_ms"]
        print_table(console, "score:batch by id against OIP v2 infer on the same rows, 1 worker, 1 connection",
                    ("ids", "OIP p50", "by id p50", "per id", "ratio", "errors"), table)  # fmt: skip
        console.print(f"p50 growth from 256 to 1,000 ids: {result['growth p50 1000 / 256']:.2f}x (linear: 3.91x)")
        floor = {"redis": redis_time(settings, port, connection, bodies["by id 256"], args.seconds),
                 "model_alone": model_alone(settings, [rows[t] for t in rng.sample(ids, 256)])}  # fmt: skip
        result["floor 256"] = floor
        console.print(f"256 ids: Redis's own time {floor['redis']['redis_us_per_request']:.0f} us per request; "
                      f"in process, predict {floor['model_alone']['predict_us']:.0f} us, reasons "
                      f"{floor['model_alone']['reasons_us']:.0f} us, both from one walk "
                      f"{floor['model_alone'].get('predict_and_reasons_us', math.nan):.0f} us per batch")  # fmt: skip
        if args.py_spy:
            result["profile 256"] = profile(args.py_spy, process.pid, port, bodies["by id 256"], 4 * args.seconds)
            for frame, share in result["profile 256"]["inclusive_share"].items():
                console.print(f"  {share:6.1%}  {frame}")
            console.print("where the samples run (the line, its caller):")
            for frame, share in result["profile 256"]["self_share"].items():
                console.print(f"  {share:6.1%}  {frame}")
        result["exactness"] = exactness(url, rng.sample(ids, 256))
        console.print(f"items equal to the single score: {result['exactness']}")
        result["saturation"] = saturation(url, ids, args.clients, args.saturation_seconds)
        console.print(f"saturation: {json.dumps(result['saturation'])}")
    result["load_average_at_end"] = os.getloadavg()
    console.print(f"load average: start {result['load_average_at_start']}, end {result['load_average_at_end']}")
    write_result(console, "score_batch", result)


if __name__ == "__main__":
    main()
