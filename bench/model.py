"""Compiled CPU engine against the frameworks' own predict, in the same run on the same machine.

    flock /tmp/fraudserve-bench.lock python -m bench.model [--calls 4000] [--batch-rows 100000]

Uses the real models of bench/gpu_models/ (LightGBM 384 trees, XGBoost 409 trees, 22 fraud_v2 features) and
their 10,000 real input rows (5 % missing values). For each model, through the `Runtime.predict` the API and the
batch command call:
- one row: latency of a (1, 22) float64 matrix, median and p99 over `--calls` calls cycling through the inputs,
  native (LightGBM num_threads=1, XGBoost inplace_predict on a 1-thread booster: fraudserve's runtime today)
  against compiled (a direct call on the caller's thread); the two alternate in rounds so drift hits both;
- batch: rows/s on `--batch-rows` rows (the inputs tiled), native on all cores against compiled on all cores,
  the median of several alternating runs;
- equality: max |compiled - native| on the inputs (batch and one-row paths), the 100k batch, and the frameworks'
  recorded predictions (bench/gpu_models/*_expected.npy);
- the build: cold (generate, compile, check; into a fresh cache directory) and warm (a cache hit) load times.
Writes model-<date>.json to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from bench.report import machine, print_table, write_result
from core.models.compiled import CFLAGS, CompiledRuntime
from core.models.manifest import Flavor
from core.models.runtime import LightGBMRuntime, Runtime, XGBoostRuntime

MODELS = Path(__file__).parent / "gpu_models"
FILES = {Flavor.lightgbm: "lightgbm.txt", Flavor.xgboost: "xgboost.json"}
ROUNDS = 8


def one_row_latencies(runtimes: dict[str, Runtime], rows: list[np.ndarray], calls: int) -> dict[str, np.ndarray]:
    """Per-call seconds for each runtime, measured in alternating rounds of calls // ROUNDS."""
    for runtime in runtimes.values():
        for row in rows[:200]:
            runtime.predict(row)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    per_round = max(1, calls // ROUNDS)
    clock = time.perf_counter
    for r in range(ROUNDS):
        for name, runtime in runtimes.items():
            predict, out = runtime.predict, times[name]
            for i in range(r * per_round, (r + 1) * per_round):
                row = rows[i % len(rows)]
                started = clock()
                predict(row)
                out.append(clock() - started)
    return {name: np.array(t) for name, t in times.items()}


def batch_rows_per_second(runtimes: dict[str, Runtime], batch: np.ndarray, runs: int = 5) -> dict[str, float]:
    """Median rows/s of `runs` alternating calls per runtime on the whole batch."""
    for runtime in runtimes.values():
        runtime.predict(batch)  # warm-up: thread pools, first-touch memory
    seconds: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(runs):
        for name, runtime in runtimes.items():
            started = time.perf_counter()
            runtime.predict(batch)
            seconds[name].append(time.perf_counter() - started)
    return {name: len(batch) / float(np.median(s)) for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000, help="one-row calls per engine")
    parser.add_argument("--batch-rows", type=int, default=100_000)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 132))
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "load_average_at_start": os.getloadavg(),  # other work on the machine skews the figures
        "cflags": list(CFLAGS),
        "calls": args.calls,
        "batch_rows": args.batch_rows,
        "native": "LightGBM Booster.predict (num_threads=1 for one row, all cores for a batch); XGBoost "
        "inplace_predict (a 1-thread booster for one row, all cores for a batch)",
    }
    inputs = np.ascontiguousarray(np.load(MODELS / "inputs.npy"), dtype=np.float64)
    single_rows = [inputs[i : i + 1].copy() for i in range(len(inputs))]  # as the API builds them: fresh (1, n)
    reps = -(-args.batch_rows // len(inputs))
    batch = np.ascontiguousarray(np.tile(inputs, (reps, 1))[: args.batch_rows])
    table: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-model-") as cache:
        for flavor, file in FILES.items():
            path = MODELS / file
            started = time.perf_counter()
            compiled = CompiledRuntime(flavor, path, threads=0, cache_dir=Path(cache))
            cold_s = time.perf_counter() - started
            started = time.perf_counter()
            CompiledRuntime(flavor, path, threads=0, cache_dir=Path(cache))
            warm_s = time.perf_counter() - started
            native: Runtime = LightGBMRuntime(path, threads=0) if flavor is Flavor.lightgbm else XGBoostRuntime(path)
            runtimes: dict[str, Runtime] = {"native": native, "compiled": compiled}

            expected = np.load(MODELS / f"{flavor.value}_expected.npy")
            on_inputs = compiled.predict(inputs)
            one_by_one = np.concatenate([compiled.predict(r) for r in single_rows[:2000]])
            native_inputs = native.predict(inputs)
            differences = {
                "inputs_batch_vs_native": float(np.max(np.abs(on_inputs - native_inputs))),
                "inputs_one_row_vs_native": float(np.max(np.abs(one_by_one - native_inputs[:2000]))),
                "inputs_vs_recorded_expected": float(np.max(np.abs(on_inputs - expected))),
                "batch_vs_native": float(np.max(np.abs(compiled.predict(batch) - native.predict(batch)))),
            }
            max_diff = max(differences.values())

            latencies = one_row_latencies(runtimes, single_rows, args.calls)
            one_row = {
                name: {
                    "median_us": float(np.median(t) * 1e6),
                    "p99_us": float(np.percentile(t, 99) * 1e6),
                    "mean_us": float(np.mean(t) * 1e6),
                }
                for name, t in latencies.items()
            }
            speed = batch_rows_per_second(runtimes, batch)
            entry = {
                "trees": compiled.build.record["num_tree"],
                "build_cold_s": cold_s,
                "load_warm_s": warm_s,
                "probe_max_abs_diff": compiled.build.record["probe_max_abs_diff"],
                "max_abs_diff": differences,
                "one_row": one_row,
                "one_row_speedup_median": one_row["native"]["median_us"] / one_row["compiled"]["median_us"],
                "one_row_speedup_p99": one_row["native"]["p99_us"] / one_row["compiled"]["p99_us"],
                "batch_rows_per_s": speed,
                "batch_speedup": speed["compiled"] / speed["native"],
            }
            result[flavor.value] = entry
            table.append(
                (
                    f"{flavor.value} {entry['trees']}",
                    f"{one_row['native']['median_us']:.1f}/{one_row['native']['p99_us']:.1f}",
                    f"{one_row['compiled']['median_us']:.2f}/{one_row['compiled']['p99_us']:.2f}",
                    f"{entry['one_row_speedup_median']:.1f}x",
                    f"{speed['native']:,.0f}",
                    f"{speed['compiled']:,.0f}",
                    f"{entry['batch_speedup']:.1f}x",
                    f"{max_diff:.1e}",
                    f"{cold_s:.1f}s/{warm_s * 1000:.0f}ms",
                )
            )
            compiled.close()
    result["load_average_at_end"] = os.getloadavg()
    print_table(
        console,
        f"Compiled vs native predict, {cores} cores, load average {result['load_average_at_start'][0]:.1f} at start",
        (
            "model",
            "1 row native µs p50/p99",
            "1 row compiled µs p50/p99",
            "1 row x",
            f"{args.batch_rows // 1000}k native rows/s",
            "compiled rows/s",
            "batch x",
            "max |diff|",
            "build cold/warm",
        ),
        table,
    )
    write_result(console, "model", result)


if __name__ == "__main__":
    main()
