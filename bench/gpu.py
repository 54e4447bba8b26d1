"""GPU scoring with nvForest against the CPU, on the same machine in the same run.

    python -m bench.gpu [--out DIR] [--sizes 1,1000,100000,1000000] [--budget 2.0]

Uses the real models in bench/gpu_models/ (LightGBM, 384 trees; XGBoost, 409 trees; 22 features of fraud_v2,
trained by `fraudserve train`) and rows/s at batch sizes 1, 1k, 100k and 1M of their 10,000 real input rows
(5 % missing values), tiled. For each model, as far as this machine allows:
- equality: the framework's own prediction (native) and fraudserve's NvForestRuntime on the GPU (double and
  single precision) against bench/gpu_models/*_expected.npy (computed where the frameworks run);
- GPU, NumPy in and out (nvForest called directly, host-device transfers included) and GPU with the batch already
  on the GPU as a CuPy array (the device synchronized after each call, so the kernel time is really counted);
- CPU on the same machine: native LightGBM / XGBoost on all cores through fraudserve's runtimes (float64, as the
  service feeds them), and nvForest's CPU mode.

It runs where there is no GPU too: the CPU rows are measured, and the GPU rows are printed as not measured with
the reason (no nvidia-smi, nvForest or CuPy not installed). A framework that is not installed (the lent GPU
machines carry nvForest and LightGBM but no XGBoost) leaves its native column empty, with the reason in the JSON.

Dependencies are kept to what a bare GPU machine has or what we carry: NumPy and fraudserve's models package
(pydantic); CuPy, nvForest, LightGBM and XGBoost are each optional. Writes gpu-<date>.json to --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.models.manifest import Flavor
from core.models.runtime import LightGBMRuntime, NvForestRuntime, Runtime, XGBoostRuntime

MODELS = Path(__file__).parent / "gpu_models"
FILES = {Flavor.lightgbm: "lightgbm.txt", Flavor.xgboost: "xgboost.json"}
SIZES = (1, 1_000, 100_000, 1_000_000)
COLUMNS = ("gpu_numpy", "gpu_resident", "nvforest_cpu", "native_cpu")
HEADER = ("model", "batch", "GPU rows/s (NumPy in/out)", "GPU rows/s (on GPU)", "nvForest CPU", "native CPU")
# nvForest's published class of results (NVIDIA's FIL/nvForest material): at large batches a single data-centre
# GPU scores forests of a few hundred trees at tens of millions of rows/s and more. A rough class, not a figure of
# our models: below it at 1M rows means something is wrong (the transfer, the precision, the layout).
PUBLISHED_CLASS_ROWS_S = 10_000_000


def rows_per_second(predict: Callable[[Any], Any], batch: Any, rows: int, budget_s: float = 2.0) -> float:
    """Rows/s of repeated calls after one warm-up call (kernel selection, allocation, thread pools)."""
    predict(batch)
    calls, started = 0, time.perf_counter()
    while True:
        predict(batch)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed > budget_s or (calls >= 3 and rows >= 1_000_000):
            return rows * calls / elapsed


def batch_of(inputs: np.ndarray, rows: int, dtype: type = np.float32) -> np.ndarray:
    reps = -(-rows // len(inputs))
    return np.ascontiguousarray(np.tile(inputs, (reps, 1))[:rows], dtype=dtype)


def gpu_status() -> tuple[bool, str]:
    """Whether the GPU rows can be measured here, and if not, why."""
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU on this machine (nvidia-smi not found)"
    for module, what in (("nvforest", "nvForest (nvforest-cu13)"), ("cupy", "CuPy")):
        if importlib.util.find_spec(module) is None:
            return False, f"{what} is not installed"
    return True, "NVIDIA GPU, nvForest and CuPy found"


def gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none"
    return subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip


def native_runtime(flavor: Flavor, path: Path, threads: int) -> tuple[Runtime | None, str | None]:
    """The framework's own booster through fraudserve's runtime, or why not (the framework is not installed)."""
    try:
        if flavor is Flavor.lightgbm:
            return LightGBMRuntime(path, threads), None
        return XGBoostRuntime(path, threads), None
    except ImportError as exc:
        return None, f"{flavor.value} is not installed ({exc.name or exc})"


def gpu_predictors(forest: Any) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[Any], Any]]:
    """nvForest on the GPU called directly: NumPy in and out (transfers included), and CuPy in and out."""
    import cupy

    def numpy_in_out(batch: np.ndarray) -> np.ndarray:
        out = forest.predict_proba(batch)
        return np.asarray(out.get() if hasattr(out, "get") else out)

    def resident(batch: Any) -> Any:
        out = forest.predict_proba(batch)
        cupy.cuda.runtime.deviceSynchronize()  # kernels are asynchronous: count them, not their launch
        return out

    return numpy_in_out, resident


def measure(
    flavor: Flavor, inputs: np.ndarray, sizes: tuple[int, ...], budget: float, gpu: bool, cores: int
) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
    path = MODELS / FILES[flavor]
    expected = np.load(MODELS / f"{flavor.value}_expected.npy")
    entry: dict[str, Any] = {"model_file": path.name, "not_measured": {}}
    native, why_not_native = native_runtime(flavor, path, cores)
    if native is not None:
        entry["max_abs_diff_native"] = float(np.max(np.abs(native.predict(inputs) - expected)))
    else:
        entry["not_measured"]["native_cpu"] = why_not_native

    fast: NvForestRuntime | None = None
    on_cpu: NvForestRuntime | None = None
    if importlib.util.find_spec("nvforest") is not None:
        on_cpu = NvForestRuntime(flavor, path, threads=cores, device="cpu", precision="single")
    else:
        entry["not_measured"]["nvforest_cpu"] = "nvForest is not installed"
    if gpu:
        exact = NvForestRuntime(flavor, path, device="gpu", precision="double")
        entry["max_abs_diff_double"] = float(np.max(np.abs(exact.predict(inputs) - expected)))
        fast = NvForestRuntime(flavor, path, device="gpu", precision="single")
        entry["max_abs_diff_single"] = float(np.max(np.abs(fast.predict(inputs) - expected)))
        print(
            f"{flavor.value}: nvForest GPU vs {flavor.value} expected, max |diff| "
            f"{entry['max_abs_diff_double']:.2e} (double), {entry['max_abs_diff_single']:.2e} (single)"
        )
    if native is not None:
        print(f"{flavor.value}: native vs expected, max |diff| {entry['max_abs_diff_native']:.2e}")

    rows: list[tuple[str, ...]] = []
    for size in sizes:
        batch = batch_of(inputs, size)
        figures: dict[str, float] = {}
        if fast is not None:
            import cupy

            numpy_in_out, resident = gpu_predictors(fast.forest)
            figures["gpu_numpy"] = rows_per_second(numpy_in_out, batch, size, budget)
            figures["gpu_resident"] = rows_per_second(resident, cupy.asarray(batch), size, budget)
        if on_cpu is not None:
            figures["nvforest_cpu"] = rows_per_second(on_cpu.forest.predict_proba, batch, size, budget)
        if native is not None:
            figures["native_cpu"] = rows_per_second(native.predict, batch.astype(np.float64), size, budget)
        entry[str(size)] = figures
        rows.append((flavor.value, f"{size:,}", *(f"{figures[k]:,.0f}" if k in figures else "-" for k in COLUMNS)))
    return entry, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="Batch sizes, comma-separated.")
    parser.add_argument("--budget", type=float, default=2.0, help="Seconds of timed calls per measurement.")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    cores = os.cpu_count() or 1
    gpu, why = gpu_status()
    if not gpu:
        print(f"GPU rows NOT measured: {why}. Measuring the CPU rows only.")
    result: dict[str, Any] = {
        "machine": {"gpu": gpu_name(), "cores": cores, "python": platform.python_version()},
        "load_average_at_start": os.getloadavg(),  # other work on the machine skews the CPU rows
        "started": datetime.now(UTC).isoformat(),
        "gpu_measured": gpu,
        "gpu_status": why,
        "sizes": list(sizes),
        "published_class_rows_s": PUBLISHED_CLASS_ROWS_S,
    }
    inputs = np.load(MODELS / "inputs.npy")
    table: list[tuple[str, ...]] = []
    for flavor in (Flavor.lightgbm, Flavor.xgboost):
        entry, rows = measure(flavor, inputs, sizes, args.budget, gpu, cores)
        result[flavor.value] = entry
        table.extend(rows)
        for column, reason in entry["not_measured"].items():
            print(f"{flavor.value}: {column} not measured: {reason}")

    print(f"rows/s on {cores} cores{'' if gpu else ' (GPU columns: not measured, ' + why + ')'}")
    print(" | ".join(HEADER))
    for row in table:
        print(" | ".join(row))
    largest = str(max(sizes))
    for flavor in (Flavor.lightgbm, Flavor.xgboost):
        figures = result[flavor.value].get(largest, {})
        if "gpu_numpy" in figures:
            best = max(figures["gpu_numpy"], figures["gpu_resident"])
            verdict = "within" if best >= PUBLISHED_CLASS_ROWS_S else "BELOW"
            print(
                f"{flavor.value} at {int(largest):,} rows: GPU {best:,.0f} rows/s, {verdict} nvForest's published "
                f"class (tens of millions of rows/s for a few hundred trees)"
            )
        else:
            print(
                f"{flavor.value}: no GPU figure to compare with nvForest's published class (tens of millions of "
                f"rows/s for a few hundred trees): {why}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"gpu-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    result["load_average_at_end"] = os.getloadavg()
    target.write_text(json.dumps(result, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
