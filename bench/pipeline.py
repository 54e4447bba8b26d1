"""Offline pipeline benchmark: backfill transactions/s and materialize rows/s at about 1 million transactions.

    python -m bench.pipeline [--cards 45000 --days 14] [--skip-materialize]

Prints a table with the machine's core count and writes bench/results/pipeline-<date>.json. Uses its own
embedded redis-server under a temporary FRAUDSERVE_HOME (or FRAUDSERVE_REDIS when set).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench.report import machine, print_table, write_result
from fraudserve import feature_store
from fraudserve.embedded_redis import online_store
from fraudserve.settings import Settings
from pipelines.generate import GenerateConfig, generate
from pipelines.materialize import materialize
from pipelines.offline.backfill import backfill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=45_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--skip-materialize", action="store_true")
    args = parser.parse_args()
    console = Console()
    rows: list[tuple[str, str, str]] = []
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat()}
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-") as tmp:
        home = Path(tmp) / "home"
        os.environ["FRAUDSERVE_HOME"] = str(home)
        settings = Settings()
        started = time.perf_counter()
        generated = generate(
            Path(tmp) / "raw",
            GenerateConfig(seed=11, cards=args.cards, days=args.days, end=datetime(2026, 11, 1, tzinfo=UTC)),
        )
        gen_s = time.perf_counter() - started
        rows.append(
            ("generate", f"{generated.transactions:,} transactions", f"{generated.transactions / gen_s:,.0f}/s")
        )
        result["generate"] = {"transactions": generated.transactions, "seconds": gen_s}

        for fmt in ("parquet", "jsonl"):
            summary = backfill(
                generated.files[f"transactions_{fmt}"], generated.files[f"labels_{fmt}"], settings.offline
            )
            rows.append(
                (
                    f"backfill ({fmt} input)",
                    f"{summary.transactions.valid:,} transactions in {summary.seconds:.1f} s",
                    f"{summary.transactions_per_second:,.0f} transactions/s",
                )
            )
            result[f"backfill_{fmt}"] = {
                "transactions": summary.transactions.valid,
                "seconds": summary.seconds,
                "transactions_per_second": summary.transactions_per_second,
                "rows_written": summary.rows_written,
            }

        if not args.skip_materialize:
            with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
                feature_store.apply(settings, connection)
                store = feature_store.open_store(settings, connection)
                materialized = materialize(store, settings.offline)
            rows.append(
                (
                    "materialize (Feast, local engine)",
                    f"{materialized.rows:,} entity rows in {materialized.seconds:.1f} s",
                    f"{materialized.rows_per_second:,.0f} rows/s",
                )
            )
            result["materialize"] = {
                "rows": materialized.rows,
                "rows_by_view": materialized.entity_rows,
                "seconds": materialized.seconds,
                "rows_per_second": materialized.rows_per_second,
            }

    print_table(console, f"fraudserve offline pipeline on {os.cpu_count()} cores", ("step", "work", "throughput"), rows)
    write_result(console, "pipeline", result)


if __name__ == "__main__":
    main()
