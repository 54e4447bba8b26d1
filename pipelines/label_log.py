"""The label stream's verdicts kept as files, so that the monitoring report judges scores with them too.

Label events reach fraudserve two ways: the offline labels file (`features backfill --labels`) and the stream
(`stream produce --labels`, `Producer.send_labels`): Redis Streams, or the Kafka label topic when the stream is on
Kafka, as the workers find it: FRAUDSERVE_KAFKA_BOOTSTRAP, or the Feast repo's `KafkaSource` (`sync_kafka`: the same
files, a checkpoint per topic partition). The stream
workers fold a stream label into the window state of the entities whose features need labels (`...:lab` hashes), but
that is no place to read verdicts from: only entities with a `fraud_rate` feature keep them, only while the
transaction is inside the window, spread over one key per entity. The stream itself holds every label, but in
between every transaction (the same stream), so reading it whole for each report would cost the online store a pass
over millions of entries every few minutes.

So the report's readers copy the stream's label entries they have not seen yet into Parquet files under
`FRAUDSERVE_HOME/logs/labels/` (`sync`): a checkpoint keeps the last entry id read of each partition, each entry is
read once, and the files outlive a trimmed stream. A file is written under a temporary name and renamed, then the
checkpoint moves on; a crash in between copies the same entries again, which is harmless (the verdict in force per
transaction is the latest, `pipelines/monitoring.py` `load_labels`). A file lock lets one process copy at a time.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.events import LABELS
from pipelines.stream.log import EVENTS, partition_keys

if TYPE_CHECKING:
    from core.settings import Settings
    from pipelines.stream.kafka_log import KafkaConfig

SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("label_timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("stream_id", pa.string(), nullable=False),  # the entry's id in its partition
    ]
)
CHECKPOINT = "checkpoint.json"
READ_CHUNK = 10_000  # stream entries per XRANGE
FILE_ROWS = 200_000  # labels per file at most (a first copy of a long stream writes several)


def label_log_dir(home: Path) -> Path:
    return home / "logs" / "labels"


@contextmanager
def _locked(root: Path, wait: bool) -> Iterator[bool]:
    """The copy lock of `root`: True when held (`wait` False: False at once when another process holds it)."""
    with (root / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _write(root: Path, rows: dict[str, list[Any]], checkpoint: dict[str, str]) -> None:
    """One file of labels, then the checkpoint that says they are copied (each renamed into place)."""
    if rows["transaction_id"]:
        table = pa.Table.from_pydict(rows, schema=SCHEMA)
        name = f"part-{time.time_ns()}-{os.getpid()}.parquet"
        pq.write_table(table, root / f".{name}.tmp", compression="zstd")
        os.replace(root / f".{name}.tmp", root / name)
    (root / f".{CHECKPOINT}.tmp").write_text(json.dumps(checkpoint))
    os.replace(root / f".{CHECKPOINT}.tmp", root / CHECKPOINT)


def _checkpoint(root: Path) -> dict[str, str]:
    """Where each source (a stream partition, a topic partition) was copied up to: what `_write` stored last."""
    path = root / CHECKPOINT
    checkpoint: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    return checkpoint


def sync(
    client: Any, root: Path, partitions: int = 1, stream: str = EVENTS, wait: bool = True,
    max_entries: int | None = None,
) -> int | None:  # fmt: skip
    """Copy the label entries of the Redis stream (`partitions` keys, as the workers read them) that earlier copies
    have not, into files under `root`; returns how many labels were copied, or None when another process is copying
    and `wait` is False. `max_entries`: read at most that many stream entries of each partition this time
    (the rest on the next call), so that a long backlog is caught up in bounded steps. Redis errors are raised."""
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root, wait) as held:
        if not held:
            return None
        checkpoint = _checkpoint(root)
        copied = 0
        rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
        for key in partition_keys(stream, partitions):
            start = checkpoint.get(key, "0-0")
            read = 0
            while True:
                count = READ_CHUNK if max_entries is None else max(1, min(READ_CHUNK, max_entries - read))
                entries = client.xrange(key, min=f"({start}", max="+", count=count)
                for entry_id, fields in entries:
                    if _text(fields.get(b"kind", b"")) != LABELS.name:
                        continue
                    event = json.loads(fields[b"event"])
                    rows["transaction_id"].append(str(event["transaction_id"]))
                    rows["is_fraud"].append(bool(event["is_fraud"]))
                    rows["label_timestamp"].append(int(event["ts_ms"]))
                    rows["stream_id"].append(_text(entry_id))
                if entries:
                    start = checkpoint[key] = _text(entries[-1][0])
                read += len(entries)
                last = len(entries) < count or (max_entries is not None and read >= max_entries)
                if len(rows["transaction_id"]) >= FILE_ROWS or (last and rows["stream_id"]):
                    copied += len(rows["transaction_id"])
                    _write(root, rows, checkpoint)
                    rows = {name: [] for name in SCHEMA.names}
                if last:
                    break
        _write(root, rows, checkpoint)  # the checkpoint past entries that held no label
        return copied


def _label_rows(payloads: list[bytes | None], ids: list[str]) -> dict[str, list[Any]]:
    """The valid label events among Kafka messages (any producer's JSON, checked with the offline rules; the workers
    dead-letter the others), as rows of `SCHEMA`."""
    import numpy as np

    from pipelines.stream.producer import normalized
    from pipelines.validation import check

    records: list[dict[str, Any]] = []
    unreadable: dict[int, str] = {}
    for index, payload in enumerate(payloads):
        try:
            record = json.loads(payload or b"")
        except ValueError as exc:
            unreadable[index], record = f"not valid JSON: {exc}", {}
        records.append(record if isinstance(record, dict) else {})
    columns = {name: [r.get(name) for r in records] for name in LABELS.schema.names}
    checked = check(LABELS, columns, np.arange(len(records), dtype=np.int64), unreadable)
    events = normalized(LABELS, checked.valid) if checked.valid.num_rows else []
    rows: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for event, row in zip(events, checked.valid_rows.tolist(), strict=True):
        rows["transaction_id"].append(str(event["transaction_id"]))
        rows["is_fraud"].append(bool(event["is_fraud"]))
        rows["label_timestamp"].append(int(event["ts_ms"]))
        rows["stream_id"].append(ids[row])
    return rows


def sync_kafka(config: KafkaConfig, root: Path, wait: bool = True, timeout_s: float = 10) -> int | None:
    """As `sync`, from the Kafka label topic: each partition read from its checkpoint (`kafka:<topic>/<partition>`,
    the next offset) to the end it had when the copy began. The consumer is assigned the partitions and commits
    nothing, so the workers' group is not touched. Returns the labels copied, or None (another process copying)."""
    from pipelines.stream.kafka_log import KafkaUnavailable, _rdkafka

    kafka = _rdkafka()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root, wait) as held:
        if not held:
            return None
        checkpoint = _checkpoint(root)
        topic = config.labels_topic
        consumer = kafka.Consumer(
            config.client_config(**{"group.id": f"{config.group}-label-log", "enable.auto.commit": False})
        )
        copied = 0
        try:
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if metadata is None or metadata.error is not None:
                return 0  # no label topic yet: nothing produced
            for partition in sorted(metadata.partitions):
                key = f"kafka:{topic}/{partition}"
                low, high = consumer.get_watermark_offsets(kafka.TopicPartition(topic, partition), timeout=timeout_s)
                start = max(int(checkpoint.get(key, low)), low)  # a retention that dropped some: from the oldest
                if start >= high:
                    continue
                consumer.assign([kafka.TopicPartition(topic, partition, start)])
                payloads: list[bytes | None] = []
                ids: list[str] = []
                deadline = time.monotonic() + timeout_s
                while start < high and time.monotonic() < deadline:
                    for message in consumer.consume(num_messages=READ_CHUNK, timeout=0.5):
                        if message.error() is not None or message.offset() >= high:
                            continue
                        payloads.append(message.value())
                        ids.append(f"{topic}/{partition}/{message.offset()}")
                        start = message.offset() + 1
                        deadline = time.monotonic() + timeout_s
                if start < high:
                    raise KafkaUnavailable(f"Kafka at {config.bootstrap} stopped sending {topic}[{partition}]")
                rows = _label_rows(payloads, ids)
                checkpoint[key] = str(start)
                copied += len(rows["transaction_id"])
                _write(root, rows, checkpoint)
        except kafka.KafkaException as exc:
            raise KafkaUnavailable(f"Kafka at {config.bootstrap} did not answer: {exc}") from exc
        finally:
            consumer.close()
        return copied


def copy_label_stream(settings: Settings, wait: bool = True, max_entries: int | None = None) -> dict[str, Any]:
    """Copy the label stream's labels not copied yet (pipelines/label_log.py) from the online store's Redis: the one
    of FRAUDSERVE_REDIS, or the embedded redis-server when FRAUDSERVE_HOME has one. Returns `{"copied": N or None,
    "note"}`: what was read, or why the stream was not (the labels copied before still count)."""
    import redis

    from core.connections import parse_connection_string, redis_client
    from core.embedded_redis import online_store
    from core.errors import FraudserveError

    try:
        kafka = _kafka_transport(settings)
    except (FraudserveError, ValueError) as exc:  # the Feast repo cannot be read (CatalogError): where is unknown
        return {"copied": None, "note": f"the label stream was not read ({exc}); the labels copied before count"}
    if kafka is not None:
        return _copy_kafka_labels(settings, kafka, wait)
    if not settings.redis and not settings.embedded_redis_dir.exists():
        return {"copied": None, "note": "no online store (FRAUDSERVE_REDIS unset and no embedded redis-server under "
                "FRAUDSERVE_HOME): no label stream to read"}  # fmt: skip
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            node = parse_connection_string(connection)[0][0]
            socket.create_connection((node["host"], int(node["port"])), timeout=5).close()  # no client retries then
            client = redis_client(settings, connection, timeout_s=30)
            try:
                copied = sync(
                    client, label_log_dir(settings.home_dir), settings.stream_partitions, wait=wait,
                    max_entries=max_entries,
                )  # fmt: skip
            finally:
                client.close()
    except (redis.RedisError, FraudserveError, OSError) as exc:
        return {"copied": None, "note": f"the label stream was not read ({exc}); the labels copied before count"}
    if copied is None:
        return {"copied": None, "note": "another process was copying the label stream; its copy so far counts"}
    return {"copied": copied, "note": f"{copied} new label(s) copied from the label stream"}


def _kafka_transport(settings: Settings) -> KafkaConfig | None:
    """The stream's Kafka, found as the workers find it (`stream_kafka`): FRAUDSERVE_KAFKA_BOOTSTRAP, else the
    transaction view's `KafkaSource` in the Feast repo (its brokers, the label topic of FRAUDSERVE_KAFKA_LABELS_TOPIC);
    None for Redis Streams. The repo is read once per change of it or of the settings (remembered under
    FRAUDSERVE_HOME), not at each copy."""
    from pipelines.stream.kafka_log import stream_kafka

    return stream_kafka(settings)


def _copy_kafka_labels(settings: Settings, config: KafkaConfig, wait: bool) -> dict[str, Any]:
    """`copy_label_stream` when the events go through Kafka: its label topic."""
    from pipelines.stream.kafka_log import KafkaUnavailable

    try:
        copied = sync_kafka(config, label_log_dir(settings.home_dir), wait=wait)
    except KafkaUnavailable as exc:
        return {"copied": None, "note": f"the Kafka label topic was not read ({exc}); the labels copied before count"}
    if copied is None:
        return {"copied": None, "note": "another process was copying the label stream; its copy so far counts"}
    return {"copied": copied, "note": f"{copied} new label(s) copied from the Kafka topic {config.labels_topic}"}


def read(root: Path) -> pd.DataFrame:
    """Every copied label (`transaction_id`, `is_fraud`, `label_timestamp`), in copy order; empty without any."""
    files = sorted(root.glob("part-*.parquet")) if root.is_dir() else []
    tables = [pq.read_table(path, schema=SCHEMA) for path in files]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    frame: pd.DataFrame = table.select(["transaction_id", "is_fraud", "label_timestamp"]).to_pandas()
    return frame
