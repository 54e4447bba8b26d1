"""Offline batch scoring benchmark: `fraudserve models score-batch` rows/s from a Parquet file on the CPU.

    python -m bench.batch [--rows 1000000] [--chunk-rows 100000] [--device cpu]

Registers the real models of bench/gpu_models/ (LightGBM 384 trees, XGBoost 409 trees, 22 fraud_v2 features) in
a temporary registry, writes `--rows` feature rows (their 10,000 real input rows, tiled, 5 % missing values) with
a transaction_id and one pass-through column to Parquet, and scores the file through fraudserve.batch_scoring, as
the command does. Reports end-to-end rows/s (Parquet read, model, Parquet write), the model's share, the peak
memory of the process (the file is streamed: it stays near one chunk, not the file), and for reference the
native library's rows/s on the same rows held in memory in one call. The thresholds are placeholders: labels do
not change the throughput. Writes batch-<date>.json to bench/results/.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from bench.report import machine, print_table, write_result
from core.models.manifest import MANIFEST_FILE, FeatureField, Flavor, Manifest, Thresholds
from core.models.runtime import load_runtime
from fraudserve.batch_scoring import score_parquet
from fraudserve.registry import ModelRegistry

MODELS = Path(__file__).parent / "gpu_models"
FILES = {Flavor.lightgbm: "lightgbm.txt", Flavor.xgboost: "xgboost.json"}
WRITE_CHUNK = 100_000


def feature_names() -> list[str]:
    import lightgbm

    return list(lightgbm.Booster(model_file=str(MODELS / FILES[Flavor.lightgbm])).feature_name())


def register(registry: ModelRegistry, flavor: Flavor, names: list[str], work: Path) -> None:
    package = work / f"package-{flavor.value}"
    package.mkdir()
    shutil.copy(MODELS / FILES[flavor], package / FILES[flavor])
    manifest = Manifest(
        flavor=flavor,
        model_file=FILES[flavor],
        feature_service="fraud_v2",
        features=[FeatureField(name=n, dtype="float64") for n in names],
        thresholds=Thresholds(suspicious=0.5, highly_suspicious=0.9, method="placeholder (benchmark)"),
    )
    (package / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    registry.register(package, name=f"bench-{flavor.value}")


def write_rows(path: Path, inputs: np.ndarray, names: list[str], rows: int) -> None:
    """`rows` feature rows written chunk by chunk, so the benchmark process never holds the whole file."""
    schema = pa.schema(
        [("transaction_id", pa.string()), ("merchant_id", pa.string()), *((n, pa.float64()) for n in names)]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, WRITE_CHUNK):
            count = min(WRITE_CHUNK, rows - start)
            index = np.arange(start, start + count)
            block = inputs[index % len(inputs)]
            columns = [
                pa.array([f"tx-{i:09d}" for i in index]),
                pa.array([f"m-{i % 997:04d}" for i in index]),
                *(pa.array(block[:, j]) for j in range(len(names))),
            ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    console = Console(width=150)
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat(), "args": vars(args)}
    result["load_average_at_start"] = os.getloadavg()  # other work on the machine skews the figures
    inputs = np.load(MODELS / "inputs.npy")
    names = feature_names()
    table: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-batch-") as folder:
        work = Path(folder)
        registry = ModelRegistry.at(work / "models")
        source = work / "rows.parquet"
        started = time.perf_counter()
        write_rows(source, inputs, names, args.rows)
        result["input"] = {
            "rows": args.rows,
            "bytes": source.stat().st_size,
            "write_seconds": round(time.perf_counter() - started, 2),
        }
        result["peak_rss_mib_before_scoring"] = round(peak_rss_mib(), 1)
        summaries = {}
        for flavor in (Flavor.lightgbm, Flavor.xgboost):
            register(registry, flavor, names, work)
            summaries[flavor] = score_parquet(
                registry,
                source,
                work / f"scores-{flavor.value}.parquet",
                model=f"bench-{flavor.value}",
                device=args.device,
                chunk_rows=args.chunk_rows,
            )
        # Peak memory while streaming, before the in-memory reference below allocates the whole matrix.
        peak = peak_rss_mib()
        result["peak_rss_mib_after_scoring"] = round(peak, 1)
        matrix = np.ascontiguousarray(np.tile(inputs, (-(-args.rows // len(inputs)), 1))[: args.rows])
        for flavor, summary in summaries.items():
            # Reference: the native library on the same rows held in memory, one call (no Parquet, no labels).
            runtime = load_runtime(flavor, MODELS / FILES[flavor], threads=os.cpu_count() or 1)
            begun = time.perf_counter()
            runtime.predict(matrix)
            native = args.rows / (time.perf_counter() - begun)
            model_rate = summary.rows / summary.predict_seconds if summary.predict_seconds else 0.0
            figures = {"model_rows_per_second": model_rate, "native_in_memory_rows_per_second": native}
            result[flavor.value] = {**summary.as_dict(), **figures}
            table.append(
                (
                    flavor.value,
                    f"{summary.rows:,} rows, {summary.chunks} chunks",
                    summary.device.used,
                    f"{summary.seconds:.1f} s",
                    f"{summary.rows_per_second:,.0f}",
                    f"{model_rate:,.0f}",
                    f"{native:,.0f}",
                )
            )
    columns = ("model", "input", "device", "time", "rows/s end to end", "rows/s model", "native, in memory")
    print_table(console, f"batch scoring from Parquet on {os.cpu_count()} cores", columns, table)
    console.print(
        f"peak memory: {result['peak_rss_mib_before_scoring']:,.0f} MiB before scoring, {peak:,.0f} MiB after "
        f"streaming {args.rows:,} rows in chunks of {args.chunk_rows:,} (the whole matrix alone: "
        f"{args.rows * len(names) * 8 / 2**20:,.0f} MiB)"
    )
    result["load_average_at_end"] = os.getloadavg()
    write_result(console, "batch", result)


if __name__ == "__main__":
    main()
