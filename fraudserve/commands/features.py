"""`fraudserve features`: feast apply, backfill, materialize, read back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TaskID
from rich.table import Table

from fraudserve.commands.common import fail, load_settings, out, print_vectors, progress_bar
from fraudserve.embedded_redis import online_store
from fraudserve.errors import FraudserveError

app = typer.Typer(no_args_is_help=True, help="The Feast feature repo and the offline pipeline.")


# ------------------------------------------------------------------------------------------------------- features
@app.command("apply")
def features_apply() -> None:
    """`feast apply` of feature_repo/ against this run's stores."""
    from fraudserve import feature_store

    settings = load_settings()
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            output = feature_store.apply(settings, connection)
    except FraudserveError as exc:
        raise fail(exc) from exc
    out.print(output.strip(), highlight=False)


@app.command("backfill")
def features_backfill(
    transactions: Annotated[Path, typer.Option(help="Transaction events: a .parquet or .jsonl file, or a folder.")],
    labels: Annotated[Path | None, typer.Option(help="Label events: a .parquet or .jsonl file, or a folder.")] = None,
    quarantine: Annotated[
        bool,
        typer.Option("--quarantine", help="Set invalid events aside (and count them) instead of failing."),
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="embedded (DuckDB in this process) or ray (the same SQL per entity shard on Ray); "
            "default FRAUDSERVE_OFFLINE_ENGINE (embedded).",
        ),
    ] = None,
) -> None:
    """Offline pipeline: raw events to every feature, point in time, into the offline store."""
    from pydantic import ValidationError

    from pipelines.offline.backfill import backfill
    from pipelines.offline.distributed import RayOptions, check_engine

    try:
        settings = load_settings()
    except ValidationError as exc:
        raise fail(ValueError(_settings_error(exc))) from exc
    try:
        chosen = check_engine(engine or settings.offline_engine.value)
        ray = RayOptions(
            address=settings.ray_address,
            shards=settings.ray_shards,
            object_store_mb=settings.ray_object_store_mb,
            cpus=settings.backfill_threads,
        )
        with progress_bar() as progress:
            tasks: dict[str, TaskID] = {}

            def report(stage: str, fraction: float) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=1.0)
                progress.update(tasks[stage], completed=fraction)

            summary = backfill(
                transactions,
                labels,
                settings.offline,
                on_invalid="quarantine" if quarantine else "reject",
                progress=report,
                threads=settings.backfill_threads,
                engine=chosen,
                ray=ray,
            )
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc
    table = Table(title=f"offline store: {settings.offline.root}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, rows in summary.rows_written.items():
        table.add_row(name, f"{rows:,}")
    out.print(table)
    rejected = summary.transactions.rejected + summary.labels.rejected
    out.print(
        f"{summary.transactions.valid:,} transactions and {summary.labels.valid:,} labels in {summary.seconds:.1f} s: "
        f"[bold]{summary.transactions_per_second:,.0f} transactions/s[/] on {os.cpu_count()} cores ({chosen} engine)"
    )
    if rejected:
        out.print(f"[yellow]{rejected:,} invalid events quarantined in {summary.quarantine}[/]")
    if summary.labels_without_transaction:
        out.print(f"[yellow]{summary.labels_without_transaction:,} labels name no known transaction[/]")


def _settings_error(exc: Any) -> str:
    """A settings error in terms of the FRAUDSERVE_* variables a person sets."""
    lines = []
    for error in exc.errors():
        name = "FRAUDSERVE_" + "_".join(str(part) for part in error["loc"]).upper()
        lines.append(f"{name}={error.get('input')!r}: {error['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


@app.command("materialize")
def features_materialize(
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="fast: DuckDB + vectorised encoding + a write-if-newer Lua script (the same bytes as Feast's, "
            "about 10x its rows/s); feast: Feast's own `store.materialize`.",
        ),
    ] = "fast",
) -> None:
    """Offline store to the Redis online store (Feast's layout, never overwriting a newer row)."""
    from fraudserve import feature_store
    from pipelines.materialize import ENGINES, materialize

    if engine not in ENGINES:
        raise fail(ValueError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}"))
    settings = load_settings()
    try:
        with (
            online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection,
            progress_bar() as progress,
        ):
            tasks: dict[str, TaskID] = {}

            def report(view: str, done: int, total: int) -> None:
                if view not in tasks:
                    tasks[view] = progress.add_task(view, total=max(total, done, 1))
                progress.update(tasks[view], completed=done)

            store = feature_store.open_store(settings, connection)
            summary = materialize(store, settings.offline, engine=engine, progress=report)
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc
    written = f", {sum(summary.written.values()):,} written" if summary.engine == "fast" else ""
    out.print(
        f"materialized {summary.rows:,} entity rows ({summary.start:%Y-%m-%d %H:%M} to {summary.end:%Y-%m-%d %H:%M}) "
        f"in {summary.seconds:.1f} s: [bold]{summary.rows_per_second:,.0f} rows/s[/] ({summary.engine} engine{written})"
    )


@app.command("get")
def features_get(
    transaction_ids: Annotated[list[str], typer.Argument(help="Transaction ids to read.")],
    feature_service: Annotated[str, typer.Option(help="Feast feature service.")] = "fraud_v2",
) -> None:
    """Print the online feature vectors of ingested transactions, read back through Feast."""
    from fraudserve import feature_store
    from fraudserve.online import feature_vectors

    settings = load_settings()
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            store = feature_store.open_store(settings, connection)
            vectors = feature_vectors(store, feature_service, transaction_ids)
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc
    print_vectors(vectors)
