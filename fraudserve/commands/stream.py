"""`fraudserve stream`: produce, run workers, status."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fraudserve.commands.common import console, fail, load_settings, out, progress_bar
from fraudserve.embedded_redis import online_store
from fraudserve.errors import FraudserveError

app = typer.Typer(no_args_is_help=True, help="The streaming pipeline on Redis Streams.")


# --------------------------------------------------------------------------------------------------------- stream
@app.command("produce")
def stream_produce(
    file: Annotated[Path, typer.Option(help="Events, one JSON object per line (or Parquet).")],
    labels: Annotated[bool, typer.Option("--labels", help="The file holds label events.")] = False,
) -> None:
    """Validate events and append them to the stream; invalid ones go to the dead-letter stream with the reason."""
    from fraudserve.feature_store import redis_client
    from pipelines.events import LABELS, TRANSACTIONS
    from pipelines.stream.worker import produce

    settings = load_settings()
    try:
        with (
            online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection,
            progress_bar() as progress,
        ):
            task = progress.add_task(f"producing {file.name}", total=1.0)
            counts = produce(
                redis_client(settings, connection),
                file,
                LABELS if labels else TRANSACTIONS,
                progress=lambda fraction: progress.update(task, completed=fraction),
            )
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc
    out.print(f"appended {counts['appended']:,} events; {counts['dead_letter']:,} invalid to the dead-letter stream")


def _work(connection: str, consumer: str, until_idle: float | None, index: int = 0) -> None:
    from fraudserve.feature_store import feast_project, redis_client
    from pipelines.stream.worker import Worker

    settings = load_settings()
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


@app.command("run")
def stream_run(
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (consumers of one group).")] = 1,
    until_idle: Annotated[
        float | None, typer.Option(help="Stop once the stream has been drained for this many seconds.")
    ] = None,
) -> None:
    """Consume the stream: every event updates its entities' online features, exactly once in effect."""
    import multiprocessing
    import socket

    settings = load_settings()
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
        raise fail(exc) from exc


@app.command("status")
def stream_status() -> None:
    """Lag, events/s, dead-letter count and freshness (append to online visibility, p50 and p99)."""
    from fraudserve.feature_store import redis_client
    from pipelines.stream.worker import status

    settings = load_settings()
    with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
        figures = status(redis_client(settings, connection))
    table = Table(title="stream fraudserve:events, group fraudserve-features")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, "-" if value is None else f"{value:,.1f}" if isinstance(value, float) else f"{value:,}")
    out.print(table)
