"""`fraudserve features`: feast apply, backfill, materialize, read back."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TaskID
from rich.table import Table

from core.embedded_redis import online_store
from core.errors import FraudserveError
from fraudserve.commands.common import fail, load_settings, out, print_vectors, progress_bar

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
    if settings.offline.transactions_file.exists():  # a re-apply over computed features: keep registration's answers
        _fill_registration_cache(settings)


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
    _fill_registration_cache(settings)


def _fill_registration_cache(settings: Any) -> None:
    """Keep what a model registration asks Feast about every feature service (fraudserve/service_cache.py), now that
    Feast's registry or the offline store changed: the next `models register` then imports no Feast. Best effort:
    a failure costs only that speed-up, never the command, and says why."""
    from fraudserve import service_cache
    from fraudserve.commands.models import feast_as_optimized

    try:
        with feast_as_optimized():
            from fraudserve.feature_store import open_offline_store
            from inference_api.domain.feature_services import FeastFeatureServices

            services = FeastFeatureServices(open_offline_store(settings), settings.offline)
            filled = service_cache.fill(settings, services)
    except Exception as exc:  # the cache is an optimisation: the backfill itself succeeded
        out.print(f"[yellow]registration cache not refreshed ({exc}); the next registration reads Feast itself[/]")
        return
    if filled:
        out.print(f"registration cache refreshed for {len(filled)} feature services")


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
    written = f", {sum(summary.written.values()):,} written" if summary.written else ""
    out.print(
        f"materialized {summary.rows:,} entity rows ({summary.start:%Y-%m-%d %H:%M} to {summary.end:%Y-%m-%d %H:%M}) "
        f"in {summary.seconds:.1f} s: [bold]{summary.rows_per_second:,.0f} rows/s[/] ({summary.engine} engine{written})"
    )
    table = Table("view", "engine", "rows", "span")
    for view, view_engine in summary.engines.items():
        low, high = summary.spans[view]
        table.add_row(
            view, view_engine, f"{summary.entity_rows.get(view, 0):,}", f"{low:%Y-%m-%d %H:%M} to {high:%Y-%m-%d %H:%M}"
        )
    out.print(table)


@app.command("list")
def features_list(
    sample: Annotated[int, typer.Option(help="Online keys sampled for each view's newest row.")] = 5000,
) -> None:
    """Every feature view of the Feast repo: kind, entity, features (function and window, or source), TTL, and its
    freshness online (the age of the newest row among the sampled keys)."""
    from core import connections
    from fraudserve import feature_store
    from pipelines.features.catalog import CatalogError, load_catalog
    from pipelines.freshness import newest_rows

    settings = load_settings()
    try:
        catalog = load_catalog(settings.feature_repo)
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            client = connections.redis_client(settings, connection, timeout_s=5)
            newest = newest_rows(client, feature_store.feast_project(settings), sample)
    except (FraudserveError, CatalogError, ValueError) as exc:
        raise fail(exc) from exc
    now = time.time()

    def age(view: str) -> str:
        stamp = newest.get(view)
        return "not online" if stamp is None else f"{now - stamp:,.0f} s"

    table = Table("view", "key", "feature", "definition", "TTL", "newest online", title="Feature views")
    for window in catalog.window_views:
        for i, f in enumerate(window.features):
            over = f" over {_duration(f.window)}" if f.window else ""
            first = i == 0
            table.add_row(
                window.view if first else "",
                window.join_key if first else "",
                f.name,
                f"{f.agg.value}({f.column or ''}){over}",
                _duration(window.ttl) if first else "",
                age(window.view) if first else "",
            )
    for batch in catalog.batch_views:
        for i, (name, dtype) in enumerate(batch.features):
            first = i == 0
            table.add_row(
                batch.view if first else "",
                batch.join_key if first else "",
                name,
                f"{dtype} from {batch.path}" if first else dtype,
                _duration(batch.ttl) if first and batch.ttl else "",
                age(batch.view) if first else "",
            )
    for i, (name, dtype) in enumerate(catalog.transaction_fields.items()):
        first = i == 0
        table.add_row(
            "transaction_features" if first else "",
            catalog.transaction.join_key if first else "",
            name,
            f"{dtype} (event field)",
            "",
            age("transaction_features") if first else "",
        )
    for odfv in catalog.on_demand_views:
        table.add_row(odfv, "", "", "on demand: computed at request time", "", "")
    out.print(table)
    out.print("feature services: " + ", ".join(catalog.feature_services))


def _duration(value: Any) -> str:
    """A timedelta as 10m, 1h, 7d (the largest whole unit)."""
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
