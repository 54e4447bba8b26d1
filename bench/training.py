"""Training benchmark: training-set build (Feast get_historical_features) and training time at ~1 M transactions.

    python -m bench.training [--cards 15000 --days 40]

Prints a table with the machine's core count and writes bench/results/training-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from bench.report import machine, print_table, write_result
from core.models.manifest import Flavor
from core.settings import Settings
from fraudserve import feature_store
from pipelines.generate import GenerateConfig, generate
from pipelines.offline.backfill import backfill
from pipelines.training.dataset import build_training_set
from pipelines.training.train import TrainConfig, train


def main() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, default=15_000)
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--feature-service", default="fraud_v2")
    args = parser.parse_args()
    console = Console()
    rows: list[tuple[str, str, str]] = []
    result: dict[str, object] = {"machine": machine(), "started": datetime.now(UTC).isoformat()}
    with tempfile.TemporaryDirectory(prefix="fraudserve-bench-") as tmp:
        os.environ["FRAUDSERVE_HOME"] = str(Path(tmp) / "home")
        settings = Settings()
        generated = generate(
            Path(tmp) / "raw",
            GenerateConfig(seed=11, cards=args.cards, days=args.days, end=datetime(2026, 11, 1, tzinfo=UTC)),
        )
        backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
        feature_store.apply(settings, feature_store.OFFLINE_ONLY)
        store = feature_store.open_offline_store(settings)
        started = time.perf_counter()
        training_set = build_training_set(
            store,
            args.feature_service,
            settings.offline,
            progress=lambda done, total: console.print(f"  training set: {done:,}/{total:,} rows", end="\r"),
        )
        build_s = time.perf_counter() - started
        n = len(training_set.frame)
        rows.append(
            (
                f"training set ({args.feature_service}, Feast get_historical_features, ASOF store)",
                f"{n:,} rows of {generated.transactions:,} transactions in {build_s:.1f} s",
                f"{n / build_s:,.0f} rows/s",
            )
        )
        result["training_set"] = {"rows": n, "transactions": generated.transactions, "seconds": build_s}
        for flavor in Flavor:
            trained = train(training_set, TrainConfig(flavor=flavor), Path(tmp) / flavor.value)
            evaluation = trained.manifest.evaluation
            assert evaluation is not None
            rows.append(
                (
                    f"train + evaluate {flavor.value}",
                    f"{trained.seconds:.1f} s, best iteration {trained.manifest.params['best_iteration']}",
                    f"PR-AUC {evaluation.model.pr_auc:.3f} vs baseline {evaluation.baseline.pr_auc:.3f}",
                )
            )
            result[f"train_{flavor.value}"] = {
                "seconds": trained.seconds,
                "params": trained.manifest.params,
                "evaluation": json.loads(evaluation.model_dump_json()),
            }
    print_table(console, f"fraudserve training on {os.cpu_count()} cores", ("step", "work", "result"), rows)
    write_result(console, "training", result)


if __name__ == "__main__":
    main()
