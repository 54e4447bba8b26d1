"""The cost of the score log: score-by-id requests/s and p99 with the log on (sample 1.0) against off, same run;
and the monitoring report's time and peak memory over a large log.

    python -m bench.score_log [--seconds 15] [--workers 2] [--rounds 2] [--report-rows 10000000]

Builds (or reuses, `--home`) bench.api's deployment on an embedded redis-server, then alternates `fraudserve serve`
with FRAUDSERVE_SCORE_LOG_SAMPLE=0 (off) and =1 (on) for `--rounds` rounds, each loaded by bench.load at 8
connections for `--seconds` (alternating so that other load on the machine hits both alike). With the log on it
also reads the written and dropped counts back from /metrics, and checks the rows on disk.

Then it writes a synthetic log of `--report-rows` scores with the deployment model's feature names (files of
100,000 rows, as a busy API's flushes would leave them) and runs `fraudserve monitor report --json` on it in a
child process: wall time and the child's peak RSS. Prints a table and writes bench/results/score_log-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from bench.api import prepare, wait_ready
from bench.load import run_load
from bench.report import machine, write_result
from core.embedded_redis import free_port, online_store
from core.models.manifest import Manifest
from core.registry import ModelRegistry
from core.score_log import FEATURE, SCHEMA, log_files, write_part
from core.settings import Settings

FILE_ROWS = 100_000


def _counter(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def measure(
    env: dict[str, str], sample: str, bodies: list[dict[str, object]], workers: int, seconds: float, root: Path
) -> dict[str, float]:
    port = free_port()
    log = (root / f"serve-sample-{sample}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "fraudserve", "serve", "--workers", str(workers), "--port", str(port)],
        env={**env, "FRAUDSERVE_SCORE_LOG_SAMPLE": sample, "FRAUDSERVE_TOP_REASONS": "3"},
        stdout=log,
        stderr=log,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/fraud/score", bodies[0])
        run_load("127.0.0.1", port, "/v1/fraud/score", bodies, 1, 2)  # warm-up
        load = run_load("127.0.0.1", port, "/v1/fraud/score", bodies, 8, seconds)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {
        **load.summary(),
        "dropped": _counter(metrics, "fraudserve_score_log_dropped_total"),
        "written_before_stop": _counter(metrics, "fraudserve_score_log_rows_total"),
    }


def cpu_per_score(manifest: Manifest, root: Path, scores: int = 20_000) -> dict[str, float]:
    """CPU seconds per logged score, in-process: the request side (ScoreLog.record) and the writer's flush (one
    Arrow table, one Parquet file), without HTTP: what the log adds to each request whatever else loads the machine."""
    from types import SimpleNamespace

    from inference_api.domain.score_log import Sampling, ScoreLog
    from inference_api.domain.scoring import Score

    model: Any = SimpleNamespace(name="fraud", version=1, manifest=manifest)
    matrix = np.random.default_rng(1).gamma(2.0, 3.0, size=(scores, len(manifest.features)))
    served = [Score(f"t{i}", 0.1, "not_fraud", model, [], 3.0, [], matrix[i]) for i in range(scores)]
    log = ScoreLog(Sampling(1.0, root), max_rows=scores + 1)
    started = time.process_time()
    for i, score in enumerate(served):
        log.record(f"r{i}", (score,))
    recorded = time.process_time()
    log.flush()
    flushed = time.process_time()
    return {"record_us": (recorded - started) / scores * 1e6, "flush_us": (flushed - recorded) / scores * 1e6,
            "scores": scores}  # fmt: skip


def synthetic_log(root: Path, names: list[str], rows: int, version: int, days: int = 3) -> float:
    """`rows` logged scores of model fraud `version` under `root`, in files of FILE_ROWS; returns seconds taken."""
    started = time.perf_counter()
    rng = np.random.default_rng(5)
    width = len(names)
    today = datetime.now(UTC).date()
    for n, first in enumerate(range(0, rows, FILE_ROWS)):
        count = min(FILE_ROWS, rows - first)
        values = rng.gamma(2.0, 3.0, size=count * width).round(1)
        values[rng.uniform(size=values.size) < 0.02] = np.nan
        features = pa.ListArray.from_arrays(
            pa.array(np.arange(0, (count + 1) * width, width), pa.int32()),
            pa.StructArray.from_arrays(
                [pa.array(np.tile(np.array(names, dtype=object), count), pa.string()),
                 pa.array(values, pa.float64(), mask=np.isnan(values))], fields=list(FEATURE),
            ),
        )  # fmt: skip
        day = today - timedelta(days=n % days)
        stamp = datetime(day.year, day.month, day.day, tzinfo=UTC)
        scores = rng.beta(1, 20, size=count)
        table = pa.Table.from_pydict(
            {"request_id": pa.array([f"r{first + i}" for i in range(count)]),
             "time": pa.array(np.full(count, int(stamp.timestamp() * 1000), dtype="datetime64[ms]"),
                              pa.timestamp("ms", tz="UTC")),
             "transaction_id": pa.array([f"t{first + i}" for i in range(count)]),
             "model": pa.array(["fraud"] * count), "version": pa.array(np.full(count, version, np.int32)),
             "role": pa.array(["production"] * count), "feature_service": pa.array(["fraud_v2"] * count),
             "score": pa.array(scores), "label": pa.array(np.where(scores > 0.5, "suspicious", "not_fraud")),
             "feature_freshness_seconds": pa.array(rng.uniform(0, 60, size=count)), "features": features},
            schema=SCHEMA,
        )  # fmt: skip
        write_part(root, day, table, n)
    return time.perf_counter() - started


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs, alternated")
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--report-rows", type=int, default=10_000_000, help="0: skip the report measurement")
    parser.add_argument("--home", type=Path, help="keep the deployment here and reuse it on the next run")
    args = parser.parse_args()
    console = Console()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    with contextlib.ExitStack() as stack:
        root = args.home or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraudserve-bench-")))
        os.environ["FRAUDSERVE_HOME"] = str(root / "home")
        os.environ.pop("FRAUDSERVE_REDIS", None)
        settings = Settings()
        connection = stack.enter_context(online_store(None, settings.embedded_redis_dir, settings.redis_server_bin))
        env = {**os.environ, **settings.feast_environment(connection), "FRAUDSERVE_REDIS": connection}
        recent = prepare(root, settings, connection, args.cards, args.days, console)
        bodies: list[dict[str, object]] = [{"transaction_id": r[0]} for r in recent]

        model = ModelRegistry.at(settings.models_dir, None, None).get("fraud")
        result["cpu_per_score"] = cpu = cpu_per_score(model.manifest, root / "cpu-log")
        shutil.rmtree(root / "cpu-log", ignore_errors=True)
        console.print(f"CPU per logged score: record {cpu['record_us']:.1f} us (request side), "
                      f"flush {cpu['flush_us']:.1f} us (writer thread)")  # fmt: skip
        runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for mode, sample in (("off", "0"), ("on", "1")):
                files_before = set(log_files([settings.score_log_dir]))
                run = measure(env, sample, bodies, args.workers, args.seconds, root)
                new = [p for p in log_files([settings.score_log_dir]) if p not in files_before]
                run["log_bytes"] = sum(p.stat().st_size for p in new)
                run["log_files"] = len(new)
                run["log_rows"] = sum(pq.ParquetFile(p).metadata.num_rows for p in new)
                runs[mode].append(run)
                console.print(f"log {mode}: {run['rps']:,.0f} req/s, p99 {run['p99_ms']:.2f} ms")
        result["runs"] = runs
        if args.rounds:
            summary = {
                mode: {"rps": float(np.mean([r["rps"] for r in rs])),
                       "p99_ms": float(np.mean([r["p99_ms"] for r in rs]))}
                for mode, rs in runs.items()
            }  # fmt: skip
            result["summary"] = summary
            result["rps_cost_percent"] = 100 * (1 - summary["on"]["rps"] / summary["off"]["rps"])
        on_requests = sum(r["requests"] for r in runs["on"])
        result["logged_bytes_per_score"] = sum(r["log_bytes"] for r in runs["on"]) / max(on_requests, 1)

        if args.report_rows:
            synthetic = root / "synthetic-home"
            shutil.rmtree(synthetic / "logs", ignore_errors=True)  # a previous run's
            synthetic_settings = settings.model_copy(update={"home": synthetic})
            synthetic_settings.models_dir.parent.mkdir(parents=True, exist_ok=True)
            if not synthetic_settings.models_dir.exists():
                os.symlink(settings.models_dir, synthetic_settings.models_dir)
            console.print(f"writing a synthetic log of {args.report_rows:,} scores ...")
            written = synthetic_log(synthetic_settings.score_log_dir, model.manifest.feature_names,
                                    args.report_rows, model.version)  # fmt: skip
            size = sum(p.stat().st_size for p in log_files([synthetic_settings.score_log_dir]))
            started = time.perf_counter()
            child = subprocess.run(
                [sys.executable, "-c", "import resource, sys; from fraudserve.cli import app\n"
                 "try:\n    app(['monitor', 'report', '--days', '30', '--json'])\nexcept SystemExit:\n    pass\n"
                 "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"],
                env={**env, "FRAUDSERVE_HOME": str(synthetic)}, capture_output=True, text=True, check=True,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            peak_mb = int(child.stderr.strip().splitlines()[-1]) / 1024
            result["report"] = {"rows": args.report_rows, "seconds": seconds, "peak_rss_mb": peak_mb,
                                "log_bytes": size, "write_seconds": written,
                                "features": len(model.manifest.feature_names)}  # fmt: skip

    if not runs["off"] or not runs["on"]:
        write_result(console, "score_log", result)
        return
    table = Table(title=f"score by id, log off vs on, {args.workers} worker(s), 8 connections, {os.cpu_count()} cores")
    for column in ("score log", "requests/s", "p99 ms", "dropped"):
        table.add_column(column, justify="right")
    for mode, rs in runs.items():
        for r in rs:
            table.add_row(mode, f"{r['rps']:,.0f}", f"{r['p99_ms']:.2f}", f"{r['dropped']:.0f}")
    console.print(table)
    console.print(f"cost of logging: {result['rps_cost_percent']:.1f} % of requests/s (target < 10 %)")
    if "report" in result:
        report = result["report"]
        assert isinstance(report, dict)
        console.print(f"monitor report over {report['rows']:,} logged scores ({report['features']} features): "
                      f"{report['seconds']:.1f} s, peak RSS {report['peak_rss_mb']:,.0f} MB")  # fmt: skip
    write_result(console, "score_log", result)


if __name__ == "__main__":
    main()
