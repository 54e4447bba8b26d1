"""The `fraudserve` command line: one thin layer over the pipelines, with progress and plain error messages."""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from fraudserve.embedded_redis import EmbeddedRedis, online_store
from fraudserve.errors import FraudserveError
from fraudserve.models.manifest import Flavor
from fraudserve.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Payments fraud scoring on Feast and Redis.")
data_app = typer.Typer(no_args_is_help=True, help="Synthetic transaction and label events.")
features_app = typer.Typer(no_args_is_help=True, help="The Feast feature repo and the offline pipeline.")
redis_app = typer.Typer(no_args_is_help=True, help="The embedded redis-server (when FRAUDSERVE_REDIS is unset).")
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
stream_app = typer.Typer(no_args_is_help=True, help="The streaming pipeline on Redis Streams.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")
models_app = typer.Typer(no_args_is_help=True, help="The model registry: register, list, show, promote, rollback.")
app.add_typer(redis_app, name="redis")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(stream_app, name="stream")

console = Console(stderr=True)
out = Console()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@app.callback()
def _main() -> None:
    # Feast's DuckDB store (through ibis) warns about deprecated DuckDB calls on every query: noise for a CLI user.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # SIGTERM (docker stop, systemd, kill) unwinds like Ctrl-C, so an embedded redis-server is shut down cleanly.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


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


# ---------------------------------------------------------------------------------------------------------- train
@app.command("train")
def train_command(
    feature_service: Annotated[str, typer.Option(help="Feast feature service to train on (fraud_v1, fraud_v2).")],
    flavor: Annotated[Flavor, typer.Option(help="Model framework.")] = Flavor.lightgbm,
    register: Annotated[str | None, typer.Option(help="Register the package under this model name.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Package folder (default under home).")] = None,
    seed: int = 7,
    label_maturity_days: Annotated[
        float, typer.Option(help="Leave out transactions younger than this at the label cut-off.")
    ] = 10.0,
    valid_days: Annotated[float, typer.Option(help="Days before the test days, for early stopping.")] = 5.0,
    test_days: Annotated[float, typer.Option(help="Latest days, held out for evaluation.")] = 5.0,
    cutoff: Annotated[str | None, typer.Option(help="Label cut-off (RFC 3339); default: the data's end.")] = None,
) -> None:
    """Training set from Feast (point in time), train, evaluate against a rules baseline, write a model package."""
    from fraudserve.feature_store import open_offline_store
    from fraudserve.registry import open_registry
    from pipelines.training.dataset import LabelPolicy, build_training_set
    from pipelines.training.train import TrainConfig, describe, train

    settings = _settings()
    try:
        policy = LabelPolicy(
            cutoff=_parse_end(cutoff) if cutoff else None, maturity=timedelta(days=label_maturity_days)
        )
        store = open_offline_store(settings)
        with _progress() as progress:
            task = progress.add_task(f"training set from {feature_service} (Feast, point in time)", total=None)
            training_set = build_training_set(
                store,
                feature_service,
                settings.offline,
                policy,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
        frame = training_set.frame
        out.print(
            f"training set: {len(frame):,} rows, {int(frame['is_fraud'].sum()):,} known fraud, "
            f"{len(training_set.features)} features, labels as of {training_set.cutoff:%Y-%m-%d %H:%M} "
            f"({training_set.seconds:.1f} s)"
        )
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        package = out_dir or settings.packages_dir / f"{feature_service}-{flavor.value}-{stamp}"
        config = TrainConfig(flavor=flavor, seed=seed, valid_days=valid_days, test_days=test_days)
        with console.status("training ...") as status:
            result = train(training_set, config, package, progress=status.update)
        out.print(f"model package: {result.package} ({result.seconds:.1f} s)")
        out.print(describe(result.manifest), highlight=False)
        if not result.beats_baseline:
            out.print("[bold yellow]the model does not beat the rules baseline on PR-AUC[/]")
        if register:
            if not result.beats_baseline:
                raise ValueError(f"{register} was not registered: the model does not beat the rules baseline")
            model = open_registry(settings).register(result.package, name=register, feature_service=feature_service)
            out.print(f"registered {model.name} version {model.version} ({', '.join(model.aliases) or 'no alias'})")
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc


# --------------------------------------------------------------------------------------------------------- models
@models_app.command("register")
def models_register(
    path: Annotated[Path, typer.Argument(help="Model package folder: manifest.json and the model file.")],
    name: Annotated[str, typer.Option(help="Model name.")],
    feature_service: Annotated[str, typer.Option(help="The feature service the model was trained on.")],
) -> None:
    """Validate a model package against its feature service and store it as the next version."""
    from fraudserve.registry import open_registry

    try:
        model = open_registry(_settings()).register(path, name=name, feature_service=feature_service)
    except FraudserveError as exc:
        raise _fail(exc) from exc
    out.print(f"registered {model.name} version {model.version} ({', '.join(model.aliases) or 'no alias'})")


@models_app.command("list")
def models_list() -> None:
    """Registered models, their versions and aliases."""
    from fraudserve.registry import open_registry

    registry = open_registry(_settings(), check_features=False)
    table = Table(title="registered models")
    for column in ("name", "version", "aliases", "flavor", "feature service", "PR-AUC", "registered"):
        table.add_column(column)
    for name in registry.names():
        for model in registry.versions(name):
            m = model.manifest
            pr_auc = m.evaluation.model.pr_auc if m.evaluation else None
            table.add_row(
                name,
                str(model.version),
                ", ".join(model.aliases),
                m.flavor.value,
                m.feature_service,
                "-" if pr_auc is None else f"{pr_auc:.4f}",
                f"{m.registered_at:%Y-%m-%d %H:%M}" if m.registered_at else "-",
            )
    out.print(table)


@models_app.command("show")
def models_show(
    name: str, version: Annotated[str, typer.Argument(help="Version number or alias.")] = "production"
) -> None:
    """A version's manifest (as JSON) and the alias history of the model."""
    from fraudserve.registry import open_registry

    registry = open_registry(_settings(), check_features=False)
    try:
        model = registry.get(name, version)
    except FraudserveError as exc:
        raise _fail(exc) from exc
    document = {
        "name": name,
        "version": model.version,
        "aliases": list(model.aliases),
        "manifest": json.loads(model.manifest.model_dump_json()),
        "alias_history": registry.history(name),
    }
    out.print_json(json.dumps(document))


@models_app.command("promote")
def models_promote(
    name: str, version: int, alias: Annotated[str, typer.Option(help="Alias to move.")] = "production"
) -> None:
    """Point an alias (production by default) at a version."""
    from fraudserve.registry import open_registry

    try:
        model = open_registry(_settings(), check_features=False).promote(name, version, alias)
    except FraudserveError as exc:
        raise _fail(exc) from exc
    out.print(f"{name}: {alias} -> version {model.version}")


@models_app.command("rollback")
def models_rollback(name: str) -> None:
    """Move production back to the version it pointed to before."""
    from fraudserve.registry import open_registry

    try:
        model = open_registry(_settings(), check_features=False).rollback(name)
    except FraudserveError as exc:
        raise _fail(exc) from exc
    out.print(f"{name}: production -> version {model.version}")


# ---------------------------------------------------------------------------------------------------------- serve
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
) -> None:
    """The inference API on uvicorn (FastAPI)."""
    from fraudserve.keys import KeyStore

    settings = _settings()
    if host not in LOOPBACK and not KeyStore(settings.keys_file).any():
        raise _fail(
            ValueError(
                f"refusing to listen on {host}: no API key exists, so the API serves on loopback only. "
                "Create one with `fraudserve keys create --name NAME --scopes score`, or use --host 127.0.0.1"
            )
        )
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            _run_api(settings, connection, host, port, workers)
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc


def _run_api(settings: Settings, connection: str, host: str, port: int, workers: int) -> None:
    import uvicorn

    from inference_api.observability import configure_logging

    os.environ.update(settings.feast_environment(connection))
    if workers > 1:
        metrics_dir = settings.home_dir / "run" / f"prometheus-{os.getpid()}"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ["FRAUDSERVE_METRICS_MULTIPROCESS"] = "1"
    configure_logging()
    from fraudserve.keys import KeyStore

    keyed = KeyStore(settings.keys_file).any()
    access = "API keys required" if keyed else "no API key exists: serving on loopback only, open to local callers"
    console.print(
        f"fraudserve API on http://{host}:{port} ({workers} worker(s)), online store {connection}, "
        f"model {settings.model_name!r}; {access}. Ctrl-C stops it."
    )
    uvicorn.run(
        "inference_api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
    )


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------------------------- keys
@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    scopes: Annotated[str, typer.Option(help="Comma-separated: score, predict, admin.")] = "score",
) -> None:
    """Create an API key; it is printed once, only its hash is stored."""
    from fraudserve.keys import KeyStore, Scope

    try:
        chosen = [Scope(s.strip()) for s in scopes.split(",") if s.strip()]
    except ValueError as exc:
        raise _fail(ValueError(f"--scopes {scopes!r}: use score, predict and/or admin")) from exc
    if not chosen:
        raise _fail(ValueError("--scopes is empty: use score, predict and/or admin"))
    record, key = KeyStore(_settings().keys_file).create(name, chosen)
    console.print(f"key {record.id} ({record.name}, scopes {', '.join(record.scopes)}); store it now, it is not kept:")
    out.print(key, highlight=False)


@keys_app.command("list")
def keys_list() -> None:
    """Key ids, names and scopes (never the secrets)."""
    from fraudserve.keys import KeyStore

    table = Table(title="API keys")
    for column in ("id", "name", "scopes", "created"):
        table.add_column(column)
    for record in KeyStore(_settings().keys_file).records().values():
        table.add_row(record.id, record.name, ", ".join(record.scopes), record.created_at)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id."""
    from fraudserve.keys import KeyStore

    if not KeyStore(_settings().keys_file).revoke(key_id):
        raise _fail(ValueError(f"no key with id {key_id!r} (see `fraudserve keys list`)"))
    out.print(f"revoked {key_id}")


# --------------------------------------------------------------------------------------------------------- stream
@stream_app.command("produce")
def stream_produce(
    file: Annotated[Path, typer.Option(help="Events, one JSON object per line (or Parquet).")],
    labels: Annotated[bool, typer.Option("--labels", help="The file holds label events.")] = False,
) -> None:
    """Validate events and append them to the stream; invalid ones go to the dead-letter stream with the reason."""
    from fraudserve.feature_store import redis_client
    from pipelines.events import LABELS, TRANSACTIONS
    from pipelines.stream.worker import produce

    settings = _settings()
    try:
        with (
            online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection,
            _progress() as progress,
        ):
            task = progress.add_task(f"producing {file.name}", total=1.0)
            counts = produce(
                redis_client(settings, connection),
                file,
                LABELS if labels else TRANSACTIONS,
                progress=lambda fraction: progress.update(task, completed=fraction),
            )
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc
    out.print(f"appended {counts['appended']:,} events; {counts['dead_letter']:,} invalid to the dead-letter stream")


def _work(connection: str, consumer: str, until_idle: float | None, index: int = 0) -> None:
    from fraudserve.feature_store import feast_project, redis_client
    from pipelines.stream.worker import Worker

    settings = _settings()
    lateness = timedelta(seconds=settings.stream_lateness_seconds)
    worker = Worker(
        redis_client(settings, connection),
        feast_project(settings),
        consumer,
        lateness,
        claim_idle_ms=settings.stream_claim_idle_ms,
    )
    if settings.stream_metrics_port:
        worker.metrics.serve(settings.stream_metrics_port + index)
    worker.run(until_idle_s=until_idle)


@stream_app.command("run")
def stream_run(
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (consumers of one group).")] = 1,
    until_idle: Annotated[
        float | None, typer.Option(help="Stop once the stream has been drained for this many seconds.")
    ] = None,
) -> None:
    """Consume the stream: every event updates its entities' online features, exactly once in effect."""
    import multiprocessing
    import socket

    settings = _settings()
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            context = multiprocessing.get_context("spawn")
            names = [f"{socket.gethostname()}-{os.getpid()}-{i}" for i in range(workers)]
            processes = [
                context.Process(target=_work, args=(connection, name, until_idle, i)) for i, name in enumerate(names)
            ]
            for process in processes:
                process.start()
            console.print(f"{workers} stream worker(s) consuming (group fraudserve-features); Ctrl-C stops them")
            try:
                for process in processes:
                    process.join()
            except (KeyboardInterrupt, SystemExit):
                for process in processes:
                    process.terminate()
                    process.join()
                raise
            failed = [p.exitcode for p in processes if p.exitcode not in (0, -15)]
            if failed:
                raise ValueError(f"{len(failed)} stream worker(s) failed (exit codes {failed}); see the log above")
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc


@stream_app.command("status")
def stream_status() -> None:
    """Lag, events/s, dead-letter count and freshness (append to online visibility, p50 and p99)."""
    from fraudserve.feature_store import redis_client
    from pipelines.stream.worker import status

    settings = _settings()
    with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
        figures = status(redis_client(settings, connection))
    table = Table(title="stream fraudserve:events, group fraudserve-features")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, "-" if value is None else f"{value:,.1f}" if isinstance(value, float) else f"{value:,}")
    out.print(table)


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
    days: Annotated[int, typer.Option(min=12, help="Days of data; training needs 10 mature days + 2 x 5.")] = 40,
    seed: int = 7,
    serve_api: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the API at the end.")] = True,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
) -> None:
    """The whole path on the embedded default: data, Feast apply, backfill, training, materialize, read-back."""
    from fraudserve import feature_store
    from fraudserve.online import feature_vectors
    from fraudserve.registry import open_registry
    from pipelines.generate import GenerateConfig, generate
    from pipelines.materialize import materialize
    from pipelines.offline.backfill import backfill
    from pipelines.training.dataset import build_training_set
    from pipelines.training.train import TrainConfig, describe, train

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
            out.rule("5. materialize into Redis through Feast")
            materialized = materialize(store, settings.offline)
            out.print(
                f"{materialized.rows:,} entity rows in {materialized.seconds:.1f} s "
                f"({materialized.rows_per_second:,.0f}/s)"
            )
            out.rule("6. the last day's events through the stream (Redis Streams, stream worker)")
            from fraudserve.feature_store import feast_project, redis_client
            from pipelines.events import LABELS, TRANSACTIONS
            from pipelines.stream.worker import Worker, produce

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
            _print_vectors(feature_vectors(store, "fraud_v2", latest))
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
                _run_api(settings, connection, "127.0.0.1", port, 1)
    except (FraudserveError, ValueError) as exc:
        raise _fail(exc) from exc


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
