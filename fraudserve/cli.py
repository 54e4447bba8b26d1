"""The `fraudserve` command line: one thin layer over the pipelines, with progress and plain error messages."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fraudserve.embedded_redis import EmbeddedRedis, online_store
from fraudserve.errors import FraudserveError
from fraudserve.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Payments fraud scoring on Feast and Redis.")
data_app = typer.Typer(no_args_is_help=True, help="Synthetic transaction and label events.")
features_app = typer.Typer(no_args_is_help=True, help="The Feast feature repo and the offline pipeline.")
redis_app = typer.Typer(no_args_is_help=True, help="The embedded redis-server (when FRAUDSERVE_REDIS is unset).")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(redis_app, name="redis")

console = Console(stderr=True)
out = Console()


def _settings() -> Settings:
    return Settings()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal and os.environ.get("FRAUDSERVE_PROGRESS") != "1",
    )


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(code=1)


# ----------------------------------------------------------------------------------------------------------- data
@data_app.command("generate")
def data_generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the events into.")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 7,
    cards: Annotated[int, typer.Option(min=1, help="Number of cards.")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Days of traffic.")] = 14,
    end: Annotated[
        str | None, typer.Option(help="End of the period (RFC 3339, exclusive); default: today 00:00 UTC.")
    ] = None,
) -> None:
    """Write synthetic transaction and label events as Parquet and JSON Lines."""
    from pipelines.generate import GenerateConfig, generate

    try:
        end_at = _parse_end(end)
        with _progress() as progress:
            task = progress.add_task("generating days", total=days)
            summary = generate(
                out_dir,
                GenerateConfig(seed=seed, cards=cards, days=days, end=end_at),
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc
    out.print(
        f"{summary.transactions:,} transactions ({summary.fraud_rate:.2%} fraud), {summary.labels:,} labels, "
        f"{summary.start:%Y-%m-%d} to {summary.end:%Y-%m-%d}, in {summary.seconds:.1f} s "
        f"({summary.transactions / max(summary.seconds, 1e-9):,.0f} transactions/s) -> {out_dir}"
    )


def _parse_end(end: str | None) -> datetime:
    if end is None:
        now = datetime.now(UTC)
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(end)
    except ValueError as exc:
        raise ValueError(f"--end {end!r} is not an RFC 3339 date-time such as 2026-11-01T00:00:00Z") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"--end {end!r} has no time zone; add Z for UTC")
    return parsed.astimezone(UTC)


# ------------------------------------------------------------------------------------------------------- features
@features_app.command("apply")
def features_apply() -> None:
    """`feast apply` of feature_repo/ against this run's stores."""
    from fraudserve import feature_store

    settings = _settings()
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            output = feature_store.apply(settings, connection)
    except FraudserveError as exc:
        raise _fail(exc) from exc
    out.print(output.strip(), highlight=False)


@features_app.command("backfill")
def features_backfill(
    transactions: Annotated[Path, typer.Option(help="Transaction events: a .parquet or .jsonl file, or a folder.")],
    labels: Annotated[Path | None, typer.Option(help="Label events: a .parquet or .jsonl file, or a folder.")] = None,
    quarantine: Annotated[
        bool,
        typer.Option("--quarantine", help="Set invalid events aside (and count them) instead of failing."),
    ] = False,
) -> None:
    """Offline pipeline: raw events to every feature, point in time, into the offline store."""
    from pipelines.offline.backfill import backfill

    settings = _settings()
    try:
        with _progress() as progress:
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
            )
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc
    table = Table(title=f"offline store: {settings.offline.root}")
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, rows in summary.rows_written.items():
        table.add_row(name, f"{rows:,}")
    out.print(table)
    rejected = summary.transactions.rejected + summary.labels.rejected
    out.print(
        f"{summary.transactions.valid:,} transactions and {summary.labels.valid:,} labels in {summary.seconds:.1f} s: "
        f"[bold]{summary.transactions_per_second:,.0f} transactions/s[/] on {os.cpu_count()} cores"
    )
    if rejected:
        out.print(f"[yellow]{rejected:,} invalid events quarantined in {summary.quarantine}[/]")
    if summary.labels_without_transaction:
        out.print(f"[yellow]{summary.labels_without_transaction:,} labels name no known transaction[/]")


@features_app.command("materialize")
def features_materialize() -> None:
    """Offline store to the Redis online store, through Feast."""
    from fraudserve import feature_store
    from pipelines.materialize import materialize

    settings = _settings()
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            summary = materialize(feature_store.open_store(settings, connection), settings.offline)
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc
    out.print(
        f"materialized {summary.rows:,} entity rows ({summary.start:%Y-%m-%d %H:%M} to {summary.end:%Y-%m-%d %H:%M}) "
        f"in {summary.seconds:.1f} s: [bold]{summary.rows_per_second:,.0f} rows/s[/]"
    )


@features_app.command("get")
def features_get(
    transaction_ids: Annotated[list[str], typer.Argument(help="Transaction ids to read.")],
    feature_service: Annotated[str, typer.Option(help="Feast feature service.")] = "fraud_v2",
) -> None:
    """Print the online feature vectors of ingested transactions, read back through Feast."""
    from fraudserve import feature_store
    from fraudserve.online import feature_vectors

    settings = _settings()
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            store = feature_store.open_store(settings, connection)
            vectors = feature_vectors(store, feature_service, transaction_ids)
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc
    _print_vectors(vectors)


def _print_vectors(vectors: list[dict[str, object]]) -> None:
    table = Table(title="online feature vectors (read through Feast)")
    table.add_column("feature")
    for vector in vectors:
        table.add_column(str(vector.get("transaction_id")), justify="right")
    for name in vectors[0] if vectors else []:
        if name == "transaction_id":
            continue
        table.add_row(name, *(_fmt(v.get(name)) for v in vectors))
    out.print(table)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------- redis
@redis_app.command("start")
def redis_start() -> None:
    """Start the embedded redis-server in the background (data under FRAUDSERVE_HOME/redis, AOF on)."""
    settings = _settings()
    try:
        server, started = EmbeddedRedis(settings.embedded_redis_dir, settings.redis_server_bin).start()
    except FraudserveError as exc:
        raise _fail(exc) from exc
    out.print(f"{'started' if started else 'already running'}: redis at {server.connection_string} (pid {server.pid})")


@redis_app.command("stop")
def redis_stop() -> None:
    """Stop the embedded redis-server cleanly (its AOF is flushed)."""
    settings = _settings()
    stopped = EmbeddedRedis(settings.embedded_redis_dir, settings.redis_server_bin).stop()
    out.print("stopped" if stopped else "not running")


@app.command("env")
def env() -> None:
    """Print the variables that let plain `feast` commands see this run's stores: eval "$(fraudserve env)"."""
    settings = _settings()
    connection = settings.redis
    if connection is None:
        server = EmbeddedRedis(settings.embedded_redis_dir, settings.redis_server_bin).running()
        if server is None:
            raise _fail(ValueError("the embedded redis is not running; start it with `fraudserve redis start`"))
        connection = server.connection_string
    for name, value in settings.feast_environment(connection).items():
        out.print(f"export {name}={json.dumps(value)}", highlight=False)


# ----------------------------------------------------------------------------------------------------------- demo
@app.command("demo")
def demo(
    cards: Annotated[int, typer.Option(min=1)] = 1000,
    days: Annotated[int, typer.Option(min=1)] = 14,
    seed: int = 7,
) -> None:
    """The whole path on the embedded default: data, Feast apply, backfill, materialize, online read-back."""
    from fraudserve import feature_store
    from fraudserve.online import feature_vectors
    from pipelines.generate import GenerateConfig, generate
    from pipelines.materialize import materialize
    from pipelines.offline.backfill import backfill

    settings = _settings()
    data_dir = settings.home_dir / "data"
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            out.rule("1. synthetic events")
            end = _parse_end(None)
            with _progress() as progress:
                task = progress.add_task("generating days", total=days)
                generated = generate(
                    data_dir,
                    GenerateConfig(seed=seed, cards=cards, days=days, end=end),
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )
            out.print(
                f"{generated.transactions:,} transactions ({generated.fraud_rate:.2%} fraud), "
                f"{generated.labels:,} labels in {data_dir}"
            )
            out.rule("2. feast apply")
            out.print(feature_store.apply(settings, connection).strip(), highlight=False)
            out.rule("3. backfill (offline features, point in time)")
            summary = backfill(
                generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline
            )
            out.print(
                f"{summary.transactions.valid:,} transactions in {summary.seconds:.1f} s "
                f"({summary.transactions_per_second:,.0f}/s) -> {settings.offline.root}"
            )
            out.rule("4. materialize into Redis through Feast")
            store = feature_store.open_store(settings, connection)
            materialized = materialize(store, settings.offline)
            out.print(
                f"{materialized.rows:,} entity rows in {materialized.seconds:.1f} s "
                f"({materialized.rows_per_second:,.0f}/s)"
            )
            out.rule("5. online feature vectors, read back through Feast")
            latest = _latest_transactions(settings, 3)
            _print_vectors(feature_vectors(store, "fraud_v2", latest))
            out.print(
                f"\nTry: FRAUDSERVE_HOME={settings.home_dir} fraudserve features get {' '.join(latest)}",
                highlight=False,
            )
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc


def _latest_transactions(settings: Settings, n: int) -> list[str]:
    import duckdb

    rows = (
        duckdb.connect()
        .execute(
            f"SELECT transaction_id FROM read_parquet('{settings.offline.transactions_file}') "
            f"WHERE device_id IS NOT NULL AND ip_address IS NOT NULL ORDER BY event_timestamp DESC LIMIT {int(n)}"
        )
        .fetchall()
    )
    return [str(r[0]) for r in rows]
