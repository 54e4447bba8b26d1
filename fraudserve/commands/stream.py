"""`fraudserve stream`: produce, run workers, status."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from core.embedded_redis import online_store
from core.errors import FraudserveError
from fraudserve.commands.common import console, fail, load_settings, out, progress_bar

if TYPE_CHECKING:
    from core.settings import Settings
    from pipelines.events import EventKind
    from pipelines.stream.kafka_log import KafkaConfig

app = typer.Typer(no_args_is_help=True, help="The streaming pipeline on Redis Streams or Apache Kafka.")


def _kafka(settings: Settings, required: bool = False) -> KafkaConfig | None:
    """This run's Kafka transport: FRAUDSERVE_KAFKA_BOOTSTRAP, else the Feast repo's KafkaSource; None: Redis."""
    from pipelines.stream.kafka_log import stream_kafka

    config = stream_kafka(settings)
    if config is None and required:
        raise ValueError(
            "--kafka: no Kafka is configured; set FRAUDSERVE_KAFKA_BOOTSTRAP=host:port, or declare the transaction "
            "events' source as a Feast KafkaSource (with JsonFormat) in the Feast repo"
        )
    return config


# --------------------------------------------------------------------------------------------------------- stream
@app.command("produce")
def stream_produce(
    file: Annotated[Path, typer.Option(help="Events, one JSON object per line (or Parquet).")],
    labels: Annotated[bool, typer.Option("--labels", help="The file holds label events.")] = False,
    kafka: Annotated[
        bool, typer.Option("--kafka", help="To Kafka (required to be configured; it is used whenever it is).")
    ] = False,
) -> None:
    """Validate events and append them to the stream; invalid ones go to the dead-letter stream with the reason.

    On Kafka (FRAUDSERVE_KAFKA_BOOTSTRAP, or the Feast repo's KafkaSource): one message per event, keyed by card id
    (labels by transaction id) so that a card's events keep their order; invalid ones to the dead-letter topic."""
    from core.connections import redis_client
    from pipelines.events import LABELS
    from pipelines.stream.producer import declared_transaction_kind, produce

    settings = load_settings()
    try:
        # SPEC's event plus the extra fields the Feast repo declares (remembered, so Feast is not imported to re-read
        # an unchanged repo)
        kind = LABELS if labels else declared_transaction_kind(settings.home_dir)
        config = _kafka(settings, required=kafka)
        if config is not None:
            _produce_kafka(config, file, kind)
            return
        with (
            online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection,
            progress_bar() as progress,
        ):
            task = progress.add_task(f"producing {file.name}", total=1.0)
            counts = produce(
                redis_client(settings, connection),
                file,
                kind,
                progress=lambda fraction: progress.update(task, completed=fraction),
                partitions=settings.stream_partitions,
            )
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc
    out.print(f"appended {counts['appended']:,} events; {counts['dead_letter']:,} invalid to the dead-letter stream")


def _produce_kafka(config: KafkaConfig, file: Path, kind: EventKind) -> None:
    from pipelines.stream.kafka_log import KafkaLog
    from pipelines.stream.producer import produce_to

    log = KafkaLog(config)
    try:
        with progress_bar() as progress:
            task = progress.add_task(f"producing {file.name} to Kafka", total=1.0)
            counts = produce_to(log, file, kind, progress=lambda fraction: progress.update(task, completed=fraction))
    finally:
        log.close()
    topic = config.labels_topic if kind.name == "label" else config.transactions_topic
    out.print(
        f"appended {counts['appended']:,} events to the Kafka topic {topic}; {counts['dead_letter']:,} invalid to "
        f"the dead-letter topic {config.dead_letter_topic}"
    )


def _work(connection: str, consumer: str, until_idle: float | None, index: int = 0) -> None:
    import faulthandler

    # A crash in native code (librdkafka, hiredis) prints every thread's Python stack to the worker's stderr before
    # the process dies and the supervisor replaces it: the log then says where it was.
    faulthandler.enable()
    from core.connections import redis_client
    from fraudserve.feature_store import feast_project
    from pipelines.stream.kafka_log import KafkaLog
    from pipelines.stream.producer import declared_events
    from pipelines.stream.worker import Worker

    settings = load_settings()
    lateness = timedelta(seconds=settings.stream_lateness_seconds)
    config = _kafka(settings)
    worker = Worker(
        redis_client(settings, connection),
        feast_project(settings),
        consumer,
        lateness,
        batch=settings.stream_read_batch,
        max_batch=settings.stream_max_read_batch,
        claim_idle_ms=settings.stream_claim_idle_ms,
        partitions=settings.stream_partitions,
        log=None if config is None else KafkaLog(config, declared_events(settings.home_dir).transactions),
    )
    if settings.stream_metrics_port:
        worker.metrics.serve(settings.stream_metrics_port + index, settings.stream_metrics_host)
    worker.run(until_idle_s=until_idle)


RESTARTS_PER_MINUTE = 5  # more worker deaths than this in a minute is a crash loop: stop and say so


@app.command("run")
def stream_run(
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (consumers of one group).")] = 1,
    until_idle: Annotated[
        float | None, typer.Option(help="Stop once the stream has been drained for this many seconds.")
    ] = None,
) -> None:
    """Consume the stream: every event updates its entities' online features, exactly once in effect.

    A worker process that dies is replaced by a new consumer; what it had read but not acknowledged is claimed by
    the others after FRAUDSERVE_STREAM_CLAIM_IDLE_MS. Workers on other machines join the same consumer group by
    running this command there with the same FRAUDSERVE_REDIS."""
    settings = load_settings()
    try:
        config = _kafka(settings)
        where = "Redis Streams" if config is None else f"Kafka {config.bootstrap}, group {config.group}"
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            console.print(f"{workers} stream worker(s) consuming ({where}); Ctrl-C stops them")
            _supervise(connection, workers, until_idle)
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc


def _supervise(connection: str, workers: int, until_idle: float | None) -> None:
    """Run `workers` processes; replace one that dies (not one that finished: `--until-idle` ends with 0)."""
    import multiprocessing
    import signal
    import socket
    import time

    context = multiprocessing.get_context("spawn")
    prefix = f"{socket.gethostname()}-{os.getpid()}"
    started = 0
    deaths: list[float] = []

    def start(index: int) -> multiprocessing.process.BaseProcess:
        nonlocal started
        name = f"{prefix}-{started}"
        started += 1
        process = context.Process(target=_work, args=(connection, name, until_idle, index), name=name)
        process.start()
        return process

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)  # a terminated supervisor stops its workers, it does not orphan them
    running = {index: start(index) for index in range(workers)}
    try:
        while running:
            time.sleep(0.5)
            for index, process in list(running.items()):
                if process.is_alive():
                    continue
                del running[index]
                if process.exitcode == 0:
                    continue  # drained (--until-idle)
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < 60] + [now]
                if len(deaths) > RESTARTS_PER_MINUTE:
                    raise ValueError(
                        f"stream workers died {len(deaths)} times within a minute (last: {process.name}, exit code "
                        f"{process.exitcode}); not restarting them. See the log above for the cause"
                    )
                replacement = start(index)
                running[index] = replacement
                console.print(
                    f"stream worker {process.name} died (exit code {process.exitcode}); replaced by "
                    f"{replacement.name}, which claims its unacknowledged events"
                )
    except (KeyboardInterrupt, SystemExit):
        for process in running.values():
            process.terminate()
        for process in running.values():
            process.join()
        raise


@app.command("status")
def stream_status() -> None:
    """Lag, events/s, dead-letter count and freshness (append to online visibility, p50 and p99); on Kafka, the lag
    of each partition as the brokers count it."""
    from core.connections import redis_client
    from pipelines.stream.kafka_log import KafkaLog
    from pipelines.stream.worker import status

    settings = load_settings()
    try:
        config = _kafka(settings)
        log = None if config is None else KafkaLog(config)
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            figures = status(redis_client(settings, connection), partitions=settings.stream_partitions, log=log)
        partitions = [] if log is None else log.partition_lag()
    except (FraudserveError, ValueError, RuntimeError) as exc:
        raise fail(exc) from exc
    if partitions:
        per_partition = Table(title=f"Kafka {config.bootstrap if config else ''}, group {settings.kafka_group}")
        for column in ("topic", "partition", "end", "committed", "lag"):
            per_partition.add_column(column, justify="left" if column == "topic" else "right")
        for row in partitions:
            per_partition.add_row(*(str(row[c]) for c in ("topic", "partition", "end", "committed", "lag")))
        out.print(per_partition)
    title = (
        "stream fraudserve:events" if config is None else f"stream {config.transactions_topic}, {config.labels_topic}"
    )
    table = Table(title=f"{title}, group fraudserve-features")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in figures.items():
        table.add_row(name, "-" if value is None else f"{value:,.1f}" if isinstance(value, float) else f"{value:,}")
    out.print(table)
