"""Backfill rows/s of the embedded engine (DuckDB in this process) against the Ray engine, same input, same run.

    flock /tmp/fraudserve-bench.lock .venv/bin/python -m bench.backfill_engines                    # ~1 M transactions
    flock /tmp/fraudserve-bench.lock .venv/bin/python -m bench.backfill_engines --transactions 10m \\
        --raw /tmp/raw-10m                                                                           # ~10 M, kept

`--transactions N` sizes `--cards` for `--days` (14) as `bench.pipeline` does; `--raw DIR` keeps the generated
files in DIR and reuses them when DIR already holds transactions.parquet and labels.parquet. Both engines run
`pipelines.offline.backfill.backfill` on the same Parquet input (staging, validation and deduplication are the same
code; only the window features differ: one DuckDB query per entity against a Ray map/reduce per entity shard); the
Ray engine starts its own local Ray (no dashboard; object store `--object-store-mb`) inside the timed call, so its
start-up and shutdown are part of its figure. The row counts of every offline-store file are checked equal.

Peak RSS: this process (sampled) and, for Ray, this process plus its descendants (raylet, GCS, workers), summed:
that sum counts the shared-memory object store once per process that maps it, so it overstates.

Prints a table with the machine's core count and writes bench/results/backfill_engines-<date>.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console

from bench.pipeline import TRANSACTIONS_PER_CARD_DAY, StepRss, count, peak_rss_mb
from bench.report import machine, print_table, write_result
from core.settings import OfflineLayout
from pipelines.generate import GenerateConfig, generate
from pipelines.offline.backfill import BackfillSummary, backfill
from pipelines.offline.distributed import RayOptions


class TreeRss(StepRss):
    """The peak of the summed RSS of this process and all its descendants (Ray's), sampled every 100 ms."""

    interval_s = 0.1

    @staticmethod
    def current_mb() -> float:
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            pid = int(entry.name)
            for line in status.splitlines():
                if line.startswith("PPid:"):
                    parents[pid] = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss[pid] = int(line.split()[1])
        tree = {os.getpid()}
        grew = True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in tree and pid not in tree:
                    tree.add(pid)
                    grew = True
        return sum(rss.get(pid, 0) for pid in tree) / 1024


def inputs(raw: Path, cards: int, days: int, console: Console) -> tuple[Path, Path, float | None]:
    """transactions.parquet and labels.parquet in `raw`: reused if there, else generated (and timed)."""
    transactions, labels = raw / "transactions.parquet", raw / "labels.parquet"
    if transactions.exists() and labels.exists():
        console.log(f"reusing {raw}")
        return transactions, labels, None
    console.log(f"generate: {cards:,} cards over {days} days into {raw}")
    started = time.perf_counter()
    generated = generate(raw, GenerateConfig(seed=11, cards=cards, days=days, end=datetime(2026, 11, 1, tzinfo=UTC)))
    return generated.files["transactions_parquet"], generated.files["labels_parquet"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=45_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--transactions", type=count, help="size --cards for about this many transactions (10m)")
    parser.add_argument("--raw", type=Path, help="generate into (or reuse) this folder instead of a temporary one")
    parser.add_argument("--shards", type=int, help="Ray engine: hash shards per entity (default 2 per CPU)")
    parser.add_argument("--object-store-mb", type=int, default=2048, help="Ray engine: the local object store")
    parser.add_argument("--engines", default="embedded,ray", help="comma-separated, run in this order")
    args = parser.parse_args()
    if args.transactions:
        args.cards = max(1, round(args.transactions / (TRANSACTIONS_PER_CARD_DAY * args.days)))
    console = Console(width=160)
    result: dict[str, object] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "arguments": dict(vars(args)),
        "load_average_at_start": os.getloadavg(),
    }
    rows: list[tuple[str, str, str, str, str]] = []
    summaries: dict[str, BackfillSummary] = {}
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-") as tmp:
        transactions, labels, gen_s = inputs(args.raw or Path(tmp) / "raw", args.cards, args.days, console)
        result["transactions_file"] = str(transactions)
        result["transactions_in_file"] = pq.ParquetFile(transactions).metadata.num_rows
        if gen_s is not None:
            result["generate_seconds"] = gen_s
        for engine in args.engines.split(","):
            console.log(f"backfill: {engine} engine")
            layout = OfflineLayout(Path(tmp) / engine / "offline")
            ray = RayOptions(shards=args.shards, object_store_mb=args.object_store_mb)
            stages: dict[str, float] = {}
            started = time.perf_counter()

            def progress(
                stage: str, fraction: float, stages: dict[str, float] = stages, started: float = started
            ) -> None:
                stages.setdefault(stage, time.perf_counter() - started)

            with StepRss() as rss, TreeRss() as tree:
                summary = backfill(transactions, labels, layout, engine=engine, ray=ray, progress=progress)
            # Staging (validation, shared code) ends where the feature computation starts.
            features_s = summary.seconds - stages.get("computing features", 0.0)
            summaries[engine] = summary
            console.log(f"{engine}: {summary.transactions_per_second:,.0f} transactions/s in {summary.seconds:.1f} s")
            result[f"backfill_{engine}"] = {
                "transactions": summary.transactions.read,
                "seconds": summary.seconds,
                "transactions_per_second": summary.transactions_per_second,
                "staging_and_dedupe_seconds": summary.seconds - features_s,
                "features_seconds": features_s,
                "rows_written": summary.rows_written,
                "step_peak_rss_mb": rss.peak_mb,
                "step_peak_tree_rss_mb": tree.peak_mb,
                "load_average_after": os.getloadavg(),
            }
            rows.append(
                (
                    f"backfill, {engine}",
                    f"{summary.transactions.read:,} transactions in {summary.seconds:.1f} s "
                    f"(features and files: {features_s:.1f} s)",
                    f"{summary.transactions_per_second:,.0f} transactions/s",
                    f"{rss.peak_mb:,.0f} MB",
                    f"{tree.peak_mb:,.0f} MB",
                )
            )
    if "embedded" in summaries and "ray" in summaries:
        embedded, ray_summary = summaries["embedded"], summaries["ray"]
        same = embedded.rows_written == ray_summary.rows_written
        result["rows_written_equal"] = same
        if not same:
            console.print(f"[red]row counts differ: {embedded.rows_written} vs {ray_summary.rows_written}[/]")
        ratio = ray_summary.transactions_per_second / embedded.transactions_per_second
        result["ratio_ray_to_embedded"] = ratio
        rows.append(("ratio ray / embedded", "transactions/s, same input, same run", f"{ratio:.2f}x", "", ""))
    result["peak_rss_mb"] = peak_rss_mb()
    columns = ("step", "work", "throughput", "peak RSS (this process)", "peak RSS (with Ray's processes)")
    print_table(console, f"fraudserve backfill engines on {os.cpu_count()} cores", columns, rows)
    write_result(console, "backfill_engines", result)


if __name__ == "__main__":
    main()
