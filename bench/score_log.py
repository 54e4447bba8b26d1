"""The cost of the score log: score-by-id requests/s and p99 with the log on (sample 1.0) against off, same run;
and the monitoring report's time and peak memory over a large log.

    python -m bench.score_log [--seconds 4] [--workers 1] [--rounds 8] [--report-rows 10000000]

Builds (or reuses, `--home`) bench.api's deployment on an embedded redis-server, then starts two `fraudserve serve`
processes side by side, one with FRAUDSERVE_SCORE_LOG_SAMPLE=1 (on) and one with =0 (off), and loads them in turn,
on, off, on, off, ... for `--rounds` pairs of `--seconds` each (bench.load, 8 connections), the order flipped every
other pair. Both servers live through the whole run, so neither pays start-up or warm-up inside a round, and short
alternating rounds make other load on the machine hit both settings alike. The cost is the median of the pairs'
ratios (on / off, each pair measured seconds apart) and, as a check, the ratio of the total requests. Since the
machine's other load moves requests/s far more than the log does, each round also takes the CPU seconds the
server's processes spent per request (psutil), which other load changes far less; the figure compared is each
server's whole CPU time from after the warm-up to after the last flush (the writer thread's work included) over
its requests: the log's cost in CPU. With the log
on it also reads the written and dropped counts back from /metrics, and checks the rows on disk. `uptime`'s load
average is recorded before and after.

Then it writes a synthetic log of `--report-rows` scores with the deployment model's feature names (files of
100,000 rows, as a busy API's flushes would leave them) and runs `fraudserve monitor report --json` on it in a
child process: wall time and the child's peak RSS. Prints a table and writes bench/results/score_log-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from bench.api import embedded_store, prepare, wait_ready
from bench.load import run_load
from bench.report import machine, write_result
from core.embedded_redis import free_port
from core.models.manifest import Manifest
from core.registry import ModelRegistry
from core.score_log import FEATURE, SCHEMA, as_vectors, log_files, write_part

FILE_ROWS = 100_000
FLUSH_S = 5.0  # the score log's flush interval (the default; --flush-seconds)


def _counter(text: str, name: str) -> float:
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class Server:
    """One `fraudserve serve` with a given score log sample rate, kept up for the whole run."""

    def __init__(self, env: dict[str, str], sample: str, workers: int, root: Path, flush_s: float = FLUSH_S) -> None:
        self.port = free_port()
        self.output = (root / f"serve-sample-{sample}.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fraudserve", "serve", "--workers", str(workers), "--port", str(self.port)],
            env={
                **env,
                "FRAUDSERVE_SCORE_LOG_SAMPLE": sample,
                "FRAUDSERVE_TOP_REASONS": "3",
                "FRAUDSERVE_SCORE_LOG_FLUSH_SECONDS": str(flush_s),
            },
            stdout=self.output,
            stderr=self.output,
        )

    def cpu_seconds(self) -> float:
        """User and system CPU seconds of the server and its worker processes so far."""
        root = psutil.Process(self.process.pid)
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.output.close()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def compare(
    env: dict[str, str], bodies: list[dict[str, object]], workers: int, seconds: float, rounds: int, root: Path,
    console: Console, flush_s: float = FLUSH_S,
) -> dict[str, Any]:  # fmt: skip
    """Both servers up at once; rounds of load alternated between them (on, off, off, on, on, off, ...)."""
    servers = {"on": Server(env, "1", workers, root, flush_s), "off": Server(env, "0", workers, root, flush_s)}
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    try:
        for server in servers.values():
            wait_ready(f"http://127.0.0.1:{server.port}/v1/fraud/score", bodies[0], seconds=600)
            run_load("127.0.0.1", server.port, "/v1/fraud/score", bodies, 8, 2)  # warm-up
        time.sleep(min(flush_s, 30) + 1)  # the warm-up's scores written
        first = {mode: server.cpu_seconds() for mode, server in servers.items()}
        for n in range(rounds):
            for mode in ("on", "off") if n % 2 == 0 else ("off", "on"):
                spent = servers[mode].cpu_seconds()
                run = run_load("127.0.0.1", servers[mode].port, "/v1/fraud/score", bodies, 8, seconds).summary()
                run["cpu_ms_per_request"] = (servers[mode].cpu_seconds() - spent) * 1000 / max(run["requests"], 1)
                runs[mode].append({**run, "round": n, "load_average_1m": os.getloadavg()[0]})
                console.print(f"round {n + 1}, log {mode}: {run['rps']:,.0f} req/s, p99 {run['p99_ms']:.2f} ms, "
                              f"server CPU {run['cpu_ms_per_request']:.2f} ms per request")  # fmt: skip
        time.sleep(min(flush_s, 30) + 1)  # the last round's scores written, so the whole run's writing is counted
        whole = {mode: (server.cpu_seconds() - first[mode]) * 1000 for mode, server in servers.items()}
        counted = {mode: server.metrics() for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    ratios = [on["rps"] / off["rps"] for on, off in zip(runs["on"], runs["off"], strict=True)]
    total = {mode: sum(r["requests"] for r in rs) / sum(r["requests"] / r["rps"] for r in rs)
             for mode, rs in runs.items()}  # fmt: skip
    cpu = {mode: whole[mode] / sum(r["requests"] for r in rs) for mode, rs in runs.items()}
    return {
        "runs": runs,
        "cpu_ms_per_request": cpu,
        "cpu_ratio": cpu["on"] / cpu["off"],
        "pair_ratios": ratios,
        "ratio_median": float(np.median(ratios)),
        "ratio_total": total["on"] / total["off"],
        "rps": total,
        "p99_ms": {mode: float(np.median([r["p99_ms"] for r in rs])) for mode, rs in runs.items()},
        "dropped": _counter(counted["on"], "fraudserve_score_log_dropped_total"),
        "written_before_stop": _counter(counted["on"], "fraudserve_score_log_rows_total"),
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


# The log's own CPU for score:batch-shaped requests, run by `python -c` in this tree and in a baseline's (its imports
# resolve to the tree it runs in): columns (`ScoredBatch`, `ScoreLog.record_batch`) where the code has them, else a
# `Score` per item (`ScoreLog.record`). Prints one JSON object.
_BATCH_CPU = r"""
import json, sys, time
from pathlib import Path
from types import SimpleNamespace
import numpy as np
import pyarrow.parquet as pq
from core.models.manifest import Manifest
from inference_api.domain import scoring
from inference_api.domain.score_log import Sampling, ScoreLog
manifest = Manifest.model_validate_json(Path(sys.argv[1]).read_text())
root, batches, size = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = SimpleNamespace(name="fraud", version=1, manifest=manifest)
rng = np.random.default_rng(1)
log = ScoreLog(Sampling(1.0, root), max_rows=batches * size + 1)
columnar = hasattr(scoring, "ScoredBatch") and hasattr(log, "record_batch")
requests = []
for b in range(batches):
    matrix = rng.gamma(2.0, 3.0, size=(size, len(manifest.features)))
    matrix[rng.uniform(size=matrix.shape) < 0.05] = np.nan
    ids, scores = [f"t{b}-{i}" for i in range(size)], rng.uniform(size=size).tolist()
    if columnar:
        requests.append(scoring.ScoredBatch(ids, model, "production", list(range(size)), scores,
                                            ["not_fraud"] * size, [3.0] * size, [[] for _ in ids], matrix, None))
    else:
        requests.append([scoring.Score(t, s, "not_fraud", model, [], 3.0, [], matrix[i], "production")
                         for i, (t, s) in enumerate(zip(ids, scores))])
started = time.process_time()
for b, request in enumerate(requests):
    (log.record_batch if columnar else log.record)(f"r{b}", request)
recorded = time.process_time()
log.flush()
flushed = time.process_time()
files = list(root.rglob("*.parquet"))
rows = sum(pq.ParquetFile(p).metadata.num_rows for p in files)
print(json.dumps({"columnar": columnar, "requests": batches, "size": size, "rows": rows,
                  "record_us_per_request": (recorded - started) / batches * 1e6,
                  "flush_us_per_request": (flushed - recorded) / batches * 1e6,
                  "bytes_per_score": sum(p.stat().st_size for p in files) / max(rows, 1)}))
"""


def batch_cpu(manifest: Manifest, root: Path, tree: Path | None, batches: int = 400, size: int = 256) -> dict[str, Any]:
    """The log's CPU per score:batch request of `size` ids (record on the request side, flush in the writer), for
    `batches` requests written in one flush, with the code of `tree` (None: this one), in a child process."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root.parent / "batch-cpu-manifest.json").write_text(manifest.model_dump_json())
    out = subprocess.run(
        [sys.executable, "-c", _BATCH_CPU, str(root.parent / "batch-cpu-manifest.json"), str(root / "log"),
         str(batches), str(size)],
        cwd=tree or Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True,
    )  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def synthetic_log(root: Path, names: list[str], rows: int, version: int, days: int = 3, layout: str = "pairs") -> float:
    """`rows` logged scores of model fraud `version` under `root`, in files of FILE_ROWS, in the older layout
    (`pairs`: the vector as (name, value) pairs) or the one the API writes now (`vectors`); returns seconds taken."""
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
        write_part(root, day, as_vectors(table) if layout == "vectors" else table, n)
    return time.perf_counter() - started


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4, help="length of each round")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of each server")
    parser.add_argument("--rounds", type=int, default=8, help="on/off pairs, alternated")
    parser.add_argument(
        "--flush-seconds", type=float, default=FLUSH_S,
        help="the log's flush interval; a long one (600) keeps the writer idle in the rounds: the request side alone",
    )  # fmt: skip
    parser.add_argument("--cards", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--report-rows", type=int, default=10_000_000, help="0: skip the report measurement")
    parser.add_argument("--report-layouts", default="pairs", help="the synthetic log's layouts, in turn: pairs,vectors")
    parser.add_argument("--home", type=Path, help="keep the deployment here and reuse it on the next run")
    parser.add_argument("--baseline", help="a commit whose score log also writes score:batch-shaped requests (CPU)")
    parser.add_argument("--batch-repeats", type=int, default=3, help="alternated runs of the score:batch CPU measure")
    args = parser.parse_args()
    console = Console()
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    with contextlib.ExitStack() as stack:
        root, settings, connection = embedded_store(stack, args.home, "fraudserve-bench-")
        env = {**os.environ, **settings.feast_environment(connection), "FRAUDSERVE_REDIS": connection}
        recent = prepare(root, settings, connection, args.cards, args.days, console)
        bodies: list[dict[str, object]] = [{"transaction_id": r[0]} for r in recent]

        model = ModelRegistry.at(settings.models_dir, None, None).get("fraud")
        result["cpu_per_score"] = cpu = cpu_per_score(model.manifest, root / "cpu-log")
        shutil.rmtree(root / "cpu-log", ignore_errors=True)
        console.print(f"CPU per logged score: record {cpu['record_us']:.1f} us (request side), "
                      f"flush {cpu['flush_us']:.1f} us (writer thread)")  # fmt: skip
        if args.batch_repeats:
            tree = None
            if args.baseline:
                from bench.stream import baseline_tree

                tree = baseline_tree(Path(stack.enter_context(tempfile.TemporaryDirectory())), args.baseline)
            runs: dict[str, list[dict[str, Any]]] = {"new": [], "baseline": []}
            for _ in range(args.batch_repeats):  # alternated, so that other load weighs on both
                runs["new"].append(batch_cpu(model.manifest, root / "batch-cpu", None))
                if tree is not None:
                    runs["baseline"].append(batch_cpu(model.manifest, root / "batch-cpu", tree))
            summary: dict[str, Any] = {"baseline": args.baseline, "runs": runs}
            for name, found in runs.items():
                if found:
                    summary[name] = {key: float(np.median([r[key] for r in found])) for key in
                                     ("record_us_per_request", "flush_us_per_request", "bytes_per_score")}  # fmt: skip
            if runs["baseline"]:
                new, old = summary["new"], summary["baseline"]
                summary["ratio_total"] = (new["record_us_per_request"] + new["flush_us_per_request"]) / (
                    old["record_us_per_request"] + old["flush_us_per_request"]
                )
            result["batch_cpu"] = summary
            for name in ("new", "baseline"):
                if name in summary:
                    got = summary[name]
                    console.print(f"score:batch requests of 256 ids, {name}: record {got['record_us_per_request']:.0f}"
                                  f" us + write {got['flush_us_per_request']:.0f} us per request, "
                                  f"{got['bytes_per_score']:.0f} bytes per score on disk")  # fmt: skip
            if "ratio_total" in summary:
                console.print(f"the log's CPU per score:batch request, new / {args.baseline}: "
                              f"{summary['ratio_total']:.2f}x")  # fmt: skip
        compared: dict[str, Any] = {}
        if args.rounds:
            files_before = set(log_files([settings.score_log_dir]))
            result["load_average_before"] = load_average()
            compared = compare(env, bodies, args.workers, args.seconds, args.rounds, root, console, args.flush_seconds)
            result["load_average_after"] = load_average()
            new = [p for p in log_files([settings.score_log_dir]) if p not in files_before]
            compared["log_bytes"] = sum(p.stat().st_size for p in new)
            compared["log_files"] = len(new)
            compared["log_rows"] = sum(pq.ParquetFile(p).metadata.num_rows for p in new)
            compared["logged_bytes_per_score"] = compared["log_bytes"] / max(compared["log_rows"], 1)
            result.update(compared)
            result["rps_cost_percent"] = 100 * (1 - compared["ratio_median"])

        for layout in args.report_layouts.split(",") if args.report_rows else ():
            synthetic = root / "synthetic-home"
            shutil.rmtree(synthetic / "logs", ignore_errors=True)  # a previous run's
            synthetic_settings = settings.model_copy(update={"home": synthetic})
            synthetic_settings.models_dir.parent.mkdir(parents=True, exist_ok=True)
            if not synthetic_settings.models_dir.exists():
                os.symlink(settings.models_dir, synthetic_settings.models_dir)
            console.print(f"writing a synthetic log of {args.report_rows:,} scores ({layout}) ...")
            written = synthetic_log(synthetic_settings.score_log_dir, model.manifest.feature_names,
                                    args.report_rows, model.version, layout=layout)  # fmt: skip
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
            measured = {"rows": args.report_rows, "seconds": seconds, "peak_rss_mb": peak_mb, "log_bytes": size,
                        "write_seconds": written, "features": len(model.manifest.feature_names),
                        "layout": layout}  # fmt: skip
            result.setdefault("report", measured)  # the first layout's, where earlier results had it
            result.setdefault("reports", []).append(measured)  # type: ignore[attr-defined]
            console.print(f"monitor report over {args.report_rows:,} logged scores ({layout}): {seconds:.1f} s, "
                          f"peak RSS {peak_mb:,.0f} MB, {size / 1e6:,.0f} MB of Parquet")  # fmt: skip

    if not compared:
        write_result(console, "score_log", result)
        return
    table = Table(title=f"score by id, log on vs off, {args.workers} worker(s) each, 8 connections, "
                        f"{os.cpu_count()} cores, {args.seconds:g} s rounds")  # fmt: skip
    for column in ("round", "on req/s", "off req/s", "on / off", "on p99 ms", "off p99 ms", "on CPU ms/req",
                   "off CPU ms/req"):  # fmt: skip
        table.add_column(column, justify="right")
    for n, (on, off) in enumerate(zip(compared["runs"]["on"], compared["runs"]["off"], strict=True)):
        table.add_row(str(n + 1), f"{on['rps']:,.0f}", f"{off['rps']:,.0f}", f"{on['rps'] / off['rps']:.3f}",
                      f"{on['p99_ms']:.1f}", f"{off['p99_ms']:.1f}", f"{on['cpu_ms_per_request']:.2f}",
                      f"{off['cpu_ms_per_request']:.2f}")  # fmt: skip
    console.print(table)
    console.print(
        f"requests/s with the log on / off: median of pairs {compared['ratio_median']:.3f}, all requests "
        f"{compared['ratio_total']:.3f} ({compared['rps']['on']:,.0f} vs {compared['rps']['off']:,.0f}); cost "
        f"{result['rps_cost_percent']:.1f} % (target < 10 %); p99 {compared['p99_ms']['on']:.1f} vs "
        f"{compared['p99_ms']['off']:.1f} ms; {compared['log_rows']:,} rows logged, {compared['dropped']:.0f} dropped;"
        f" load average {result['load_average_before']} before, {result['load_average_after']} after"
    )
    console.print(
        f"server CPU per request (the servers' whole CPU time over the run, writer thread included, over their "
        f"requests; what the machine's other load changes little): log on "
        f"{compared['cpu_ms_per_request']['on']:.3f} ms, off {compared['cpu_ms_per_request']['off']:.3f} ms, on / off "
        f"{compared['cpu_ratio']:.3f}"
    )
    own = result["cpu_per_score"]
    assert isinstance(own, dict)
    share = (own["record_us"] + own["flush_us"]) / 1000 / compared["cpu_ms_per_request"]["off"]
    result["log_cpu_share"] = share
    console.print(
        f"the log's own CPU per score (record {own['record_us']:.1f} us + write {own['flush_us']:.1f} us, measured "
        f"in-process above) is {100 * share:.1f} % of a request's server CPU with the log off"
    )
    if "report" in result:
        report = result["report"]
        assert isinstance(report, dict)
        console.print(f"monitor report over {report['rows']:,} logged scores ({report['features']} features): "
                      f"{report['seconds']:.1f} s, peak RSS {report['peak_rss_mb']:,.0f} MB")  # fmt: skip
    write_result(console, "score_log", result)


if __name__ == "__main__":
    main()
