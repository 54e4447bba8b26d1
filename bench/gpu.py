"""GPU scoring with nvForest against the CPU, on the same machine in the same run (run it where there is a GPU).

    python -m bench.gpu [--out DIR]

Uses the real models in bench/gpu_models/ (LightGBM, 384 trees; XGBoost, 409 trees; 22 features of fraud_v2,
trained by `fraudserve train`). For each model:
- equality: fraudserve's NvForestRuntime (nvForest, double precision, on the GPU) against the framework's own
  prediction of the same rows (computed where the framework runs: bench/gpu_models/*_expected.npy), to 1e-6;
- rows/s at batch sizes 1, 1k, 100k and 1M: nvForest on the GPU (NumPy in and out, transfers included, and with
  the batch already on the GPU as CuPy), nvForest on the CPU, and native LightGBM on all CPU cores.
Writes gpu-<date>.json to --out (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fraudserve.models.manifest import Flavor
from fraudserve.models.runtime import NvForestRuntime

MODELS = Path(__file__).parent / "gpu_models"
SIZES = (1, 1_000, 100_000, 1_000_000)


def rows_per_second(predict: Any, batch: Any, rows: int, budget_s: float = 2.0) -> float:
    predict(batch)  # warm-up (kernel selection, allocation)
    calls, started = 0, time.perf_counter()
    while True:
        predict(batch)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed > budget_s or (calls >= 3 and rows >= 1_000_000):
            return rows * calls / elapsed


def batch_of(inputs: np.ndarray, rows: int) -> np.ndarray:
    reps = -(-rows // len(inputs))
    return np.ascontiguousarray(np.tile(inputs, (reps, 1))[:rows], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    import cupy

    gpu = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    result: dict[str, Any] = {
        "machine": {"gpu": gpu, "cores": os.cpu_count(), "python": platform.python_version()},
        "started": datetime.now(UTC).isoformat(),
    }
    inputs = np.load(MODELS / "inputs.npy")
    rows: list[tuple[str, ...]] = []
    for flavor, file in ((Flavor.lightgbm, "lightgbm.txt"), (Flavor.xgboost, "xgboost.json")):
        path = MODELS / file
        expected = np.load(MODELS / f"{flavor.value}_expected.npy")
        exact = NvForestRuntime(flavor, path, device="gpu", precision="double")
        difference = float(np.max(np.abs(exact.predict(inputs) - expected)))
        fast = NvForestRuntime(flavor, path, device="gpu", precision="single")
        single_difference = float(np.max(np.abs(fast.predict(inputs) - expected)))
        on_cpu = NvForestRuntime(flavor, path, threads=os.cpu_count() or 1, device="cpu", precision="single")
        entry: dict[str, Any] = {"max_abs_diff_double": difference, "max_abs_diff_single": single_difference}
        print(f"{flavor.value}: nvForest GPU vs {flavor.value} native, max |diff| {difference:.2e} (double), "
              f"{single_difference:.2e} (single)")  # fmt: skip
        for size in SIZES:
            batch = batch_of(inputs, size)
            device_batch = cupy.asarray(batch)
            figures = {
                "gpu_numpy": rows_per_second(fast.predict, batch, size),
                "gpu_resident": rows_per_second(fast.forest.predict_proba, device_batch, size),
                "nvforest_cpu": rows_per_second(on_cpu.predict, batch, size),
            }
            if flavor is Flavor.lightgbm:
                figures["native_cpu"] = rows_per_second(on_cpu.native.predict, batch.astype(np.float64), size)
            entry[str(size)] = figures
            rows.append((flavor.value, f"{size:,}", *(f"{figures.get(k, float('nan')):,.0f}" for k in
                         ("gpu_numpy", "gpu_resident", "nvforest_cpu", "native_cpu"))))  # fmt: skip
        result[flavor.value] = entry
    header = ("model", "batch", "GPU rows/s (numpy)", "GPU rows/s (resident)", "nvForest CPU", "native CPU")
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"gpu-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    target.write_text(json.dumps(result, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
