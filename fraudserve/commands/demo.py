"""`fraudserve demo`: the whole path on the embedded default."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from core.embedded_redis import online_store
from core.errors import FraudserveError
from core.models.manifest import Flavor
from fraudserve.commands.common import console, fail, load_settings, out, parse_end, print_vectors
from fraudserve.commands.data import generate_with_progress
from fraudserve.commands.serve import run_api


# ----------------------------------------------------------------------------------------------------------- demo
def demo(
    cards: Annotated[int, typer.Option(min=1)] = 1000,
    days: Annotated[
        int,
        typer.Option(
            min=22,
            help="Days of data: the last one goes through the stream, labels need 10 days to mature, then 5 test and "
            "5 validation days and at least one training day.",
        ),
    ] = 40,
    seed: int = 7,
    serve_api: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the API at the end.")] = True,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
) -> None:
    """The whole path on the embedded default: data, Feast apply, backfill, training, materialize, read-back."""
    from fraudserve import feature_store
    from fraudserve.online import feature_vectors
    from fraudserve.registry import open_registry
    from pipelines.generate import GenerateConfig
    from pipelines.materialize import materialize
    from pipelines.offline.backfill import backfill
    from pipelines.training.dataset import build_training_set
    from pipelines.training.train import TrainConfig, describe, train

    settings = load_settings()
    data_dir = settings.home_dir / "data"
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            out.rule("1. synthetic events")
            end = parse_end(None)
            generated = generate_with_progress(data_dir, GenerateConfig(seed=seed, cards=cards, days=days, end=end))
            out.print(
                f"{generated.transactions:,} transactions ({generated.fraud_rate:.2%} fraud), "
                f"{generated.labels:,} labels in {data_dir}"
            )
            out.rule("2. feast apply")
            out.print(feature_store.apply(settings, connection).strip(), highlight=False)
            out.rule("3. backfill (offline features, point in time) of all days but the last")
            history, last_day = _split_last_day(generated.files, data_dir, end)
            summary = backfill(history["transactions"], history["labels"], settings.offline)
            out.print(
                f"{summary.transactions.valid:,} transactions in {summary.seconds:.1f} s "
                f"({summary.transactions_per_second:,.0f}/s) -> {settings.offline.root}"
            )
            store = feature_store.open_store(settings, connection)
            out.rule("4. train on feature service fraud_v2 (point in time), register as model 'fraud'")
            with console.status("building the training set and training LightGBM ..."):
                training_set = build_training_set(store, "fraud_v2", settings.offline)
                stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
                result = train(
                    training_set,
                    TrainConfig(flavor=Flavor.lightgbm, seed=seed),
                    settings.packages_dir / f"fraud_v2-lightgbm-{stamp}",
                )
            out.print(f"{len(training_set.frame):,} training rows -> {result.package}")
            out.print(describe(result.manifest), highlight=False)
            if result.beats_baseline:
                model = open_registry(settings).register(result.package, name="fraud", feature_service="fraud_v2")
                out.print(f"registered fraud version {model.version} ({', '.join(model.aliases)})")
            else:
                out.print("[yellow]not registered: the model does not beat the rules baseline on this data[/]")
            out.rule("5. materialize into Redis in Feast's layout (fast engine; --engine feast for Feast's own)")
            materialized = materialize(store, settings.offline)
            out.print(
                f"{materialized.rows:,} entity rows in {materialized.seconds:.1f} s "
                f"({materialized.rows_per_second:,.0f}/s)"
            )
            out.rule("6. the last day's events through the stream (Redis Streams, stream worker)")
            from core.connections import redis_client
            from fraudserve.feature_store import feast_project
            from pipelines.events import LABELS, TRANSACTIONS
            from pipelines.stream.producer import produce
            from pipelines.stream.worker import Worker

            client = redis_client(settings, connection)
            produced = produce(client, last_day["transactions"], TRANSACTIONS)
            produce(client, last_day["labels"], LABELS)
            started = time.perf_counter()
            worker = Worker(
                client, feast_project(settings), "demo", timedelta(seconds=settings.stream_lateness_seconds)
            )
            processed = worker.run(until_idle_s=0.5)
            seconds = time.perf_counter() - started
            out.print(
                f"{produced['appended']:,} transactions of the last day streamed; {processed:,} events processed in "
                f"{seconds:.1f} s: their features are fresh in Redis and they can be scored by id"
            )
            out.rule("7. online feature vectors, read back through Feast")
            latest = _latest_transactions(last_day["transactions"], 3)
            print_vectors(feature_vectors(store, "fraud_v2", latest))
            out.print(
                f"\nTry: FRAUDSERVE_HOME={settings.home_dir} fraudserve features get {' '.join(latest)}\n"
                f"     FRAUDSERVE_HOME={settings.home_dir} fraudserve models show fraud",
                highlight=False,
            )
            if serve_api:
                out.rule("8. the inference API")
                base = f"http://127.0.0.1:{port}"
                json_header = "-H 'content-type: application/json'"
                out.print(
                    "Try, in another terminal:\n"
                    f'  curl -s {base}/v1/fraud/score {json_header} -d \'{{"transaction_id": "{latest[0]}"}}\'\n'
                    f"  curl -s '{base}/v1/fraud/score:batch' {json_header} "
                    f'-d \'{{"items": [{{"transaction_id": "{latest[1]}"}}, {{"transaction_id": "nope"}}]}}\'\n'
                    f"  curl -s {base}/v2/models/fraud\n"
                    f"  curl -s {base}/v2/health/ready\n"
                    f"  curl -s {base}/metrics | grep fraudserve_\n"
                    f"  open {base}/docs",
                    highlight=False,
                    soft_wrap=True,
                )
                run_api(settings, connection, "127.0.0.1", port, 1)
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc


def _split_last_day(files: dict[str, Path], folder: Path, end: datetime) -> tuple[dict[str, Path], dict[str, Path]]:
    """History (for the backfill) and the last day (for the stream), as Parquet and JSON Lines files."""
    import duckdb

    cutoff = end - timedelta(days=1)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    history = {"transactions": folder / "history_transactions.parquet", "labels": folder / "history_labels.parquet"}
    last = {"transactions": folder / "last_day_transactions.jsonl", "labels": folder / "last_day_labels.jsonl"}
    for kind, column in (("transactions", "event_timestamp"), ("labels", "label_timestamp")):
        source = files[f"{kind}_parquet"]
        older = f"SELECT * FROM read_parquet('{source}') WHERE {column} < $cutoff"
        con.execute(f"COPY ({older}) TO '{history[kind]}' (FORMAT parquet)", {"cutoff": cutoff})
        recent = con.execute(
            f"SELECT * FROM read_parquet('{source}') WHERE {column} >= $cutoff ORDER BY {column}", {"cutoff": cutoff}
        ).to_arrow_table()
        assert recent is not None
        with last[kind].open("w") as handle:
            for row in recent.to_pylist():
                row[column] = row[column].isoformat().replace("+00:00", "Z")
                handle.write(json.dumps(row) + "\n")
    return history, last


def _latest_transactions(path: Path, n: int) -> list[str]:
    """The last `n` transactions of a JSON Lines file that carry a device and an IP, newest first."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    chosen = [r["transaction_id"] for r in rows if r.get("device_id") and r.get("ip_address")]
    return chosen[-n:][::-1]
