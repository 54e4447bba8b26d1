"""Events onto the stream: a file's (`produce`, what `fraudserve stream produce` runs) and a service's (`Producer`).

Both validate with `pipelines.validation.check`, the rules the offline pipeline applies, and append each valid event
as the stream's entry (`RedisStreamLog.append`: the event's fields, its time as epoch milliseconds `ts_ms`, as
compact JSON), or on Kafka as one message keyed by card (`KafkaLog.append_encoded`). Each invalid event goes to the
dead-letter stream (topic) with the field and the rule it broke, and is counted: none is dropped silently.

A file is read in batches (`pipelines.offline.inputs.read_batches`) and each batch is validated column-wise, encoded
column-wise (`encode_events`) and appended in pipelined chunks. This module imports neither Feast nor the worker, so
a service that only emits events loads little.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis

from pipelines.events import LABELS, EventKind, transaction_kind, with_extra_fields
from pipelines.offline.inputs import read_batches
from pipelines.stream.log import RedisStreamLog, partition_of
from pipelines.validation import Checked, check

if TYPE_CHECKING:
    from pipelines.features.catalog import KafkaEventSource
    from pipelines.stream.kafka_log import KafkaConfig, KafkaLog

STATS = "fraudserve:stream:stats"  # the stream's counters (pipelines.stream.worker.STATS): dead letters added here
FILE_BATCH_ROWS = 20_000  # events read, validated and appended together by `produce`


def normalized(kind: EventKind, table: pa.Table) -> list[dict[str, Any]]:
    """Valid events (the `valid` table of `check`) as the worker reads them: the fields of `kind` in order without
    the time field, then `ts_ms`, the event time as epoch milliseconds."""
    time_field = kind.time_field
    stamps = table.column(time_field).cast(pa.int64()).to_pylist()
    rows: list[dict[str, Any]] = table.drop_columns([time_field]).to_pylist()
    for row, ts in zip(rows, stamps, strict=True):
        row["ts_ms"] = ts
    return rows


def _json_float(value: float) -> str:
    return json.dumps(value)


def _encoded_column(column: pa.ChunkedArray | pa.Array) -> list[str]:
    """Each value as `json.dumps` writes it (text ASCII-escaped, floats by repr, null for a missing value)."""
    values = column.to_pylist()
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        encode: Callable[[Any], str] = encode_basestring_ascii
    elif pa.types.is_floating(kind):
        finite = pc.all(pc.is_finite(column)).as_py() is not False
        encode = float.__repr__ if finite else _json_float  # NaN, Infinity as json.dumps writes them
    elif pa.types.is_boolean(kind):
        encode = {True: "true", False: "false"}.__getitem__
    elif pa.types.is_integer(kind):
        encode = int.__repr__
    else:
        encode = json.dumps
    if column.null_count == 0:
        return list(map(encode, values))
    return ["null" if value is None else encode(value) for value in values]


def encode_events(kind: EventKind, valid: pa.Table) -> list[str]:
    """The stream payload of each valid event, the very text `RedisStreamLog.append` writes for `normalized`:
    `json.dumps(event, separators=(",", ":"))`, built column by column."""
    names = [name for name in valid.column_names if name != kind.time_field]
    columns = [_encoded_column(valid.column(name)) for name in names]
    columns.append(list(map(int.__repr__, valid.column(kind.time_field).cast(pa.int64()).to_pylist())))
    keys = [encode_basestring_ascii(name).replace("%", "%%") for name in [*names, "ts_ms"]]
    template = "{" + ",".join(f"{key}:%s" for key in keys) + "}"
    return [template % values for values in zip(*columns, strict=True)]


def _partitions(kind: EventKind, valid: pa.Table, partitions: int) -> list[int] | None:
    """Each valid event's partition (`partition_of`: by card for transactions, by transaction id for labels)."""
    if partitions == 1:
        return None
    keys = {
        name: valid.column(name).to_pylist() for name in ("card_id", "transaction_id") if name in valid.column_names
    }
    rows = [dict(zip(keys, values, strict=True)) for values in zip(*keys.values(), strict=True)]
    return [partition_of(kind.name, row, partitions) for row in rows]


def _encoded(kind: EventKind, checked: Checked, partitions: int) -> tuple[list[str], list[int] | None]:
    if not checked.valid.num_rows:
        return [], None
    return encode_events(kind, checked.valid), _partitions(kind, checked.valid, partitions)


def _kafka_encoded(kind: EventKind, checked: Checked) -> tuple[list[str], list[str]]:
    """Kafka messages of the valid events (the time under the kind's own field) and their keys (`event_key`)."""
    from pipelines.stream.kafka_log import source_payload

    if not checked.valid.num_rows:
        return [], []
    payloads = [source_payload(p, kind.time_field) for p in encode_events(kind, checked.valid)]
    key_field = "transaction_id" if kind.name == LABELS.name else "card_id"
    return payloads, [str(k) for k in checked.valid.column(key_field).to_pylist()]


def _write(
    stream: RedisStreamLog | KafkaLog, kind: EventKind, encoded: tuple[list[str], Any], dead: list[dict[str, Any]]
) -> tuple[int, int]:
    """Append the encoded valid events, then the dead letters (counted in STATS on Redis); (appended, dead letters).

    `encoded`: the payloads and, on Redis, their partitions (`_encoded`), on Kafka their keys (`_kafka_encoded`)."""
    payloads, placement = encoded
    appended = stream.append_encoded(kind.name, payloads, placement) if payloads else 0
    if dead:
        stream.dead_letter(dead)
        if isinstance(stream, RedisStreamLog):
            stream.client.hincrby(STATS, "dead_letter", len(dead))
    return appended, len(dead)


def produce(
    client: redis.Redis, path: Path, kind: EventKind, progress: Callable[[float], None] | None = None,
    partitions: int = 1, batch_rows: int = FILE_BATCH_ROWS,
) -> dict[str, int]:  # fmt: skip
    """Validate the events of a file (JSON Lines or Parquet) and append them; invalid ones go to the dead-letter
    stream with the file, the row (line number), the field, the reason and the value.

    One batch is written to Redis (by a thread of its own, in order) while the next one is read, validated and
    encoded: Redis's time and the socket's overlap the parsing instead of adding to it."""
    return produce_to(RedisStreamLog(client, partitions=partitions), path, kind, progress, batch_rows)


def produce_to(
    stream: RedisStreamLog | KafkaLog, path: Path, kind: EventKind, progress: Callable[[float], None] | None = None,
    batch_rows: int = FILE_BATCH_ROWS,
) -> dict[str, int]:  # fmt: skip
    """`produce` into either transport: on Kafka (a `KafkaLog`) each valid event is one message keyed by card
    (transactions) or transaction (labels), invalid ones go to the dead-letter topic."""
    kafka = not isinstance(stream, RedisStreamLog)
    if kafka:
        stream.ensure_group()
    counts = {"appended": 0, "dead_letter": 0}

    def count(written: Future[tuple[int, int]]) -> None:
        appended, dead = written.result()  # a Redis error is raised here, in the caller's thread
        counts["appended"] += appended
        counts["dead_letter"] += dead

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fraudserve-produce") as writer:
        writing: Future[tuple[int, int]] | None = None
        for batch in read_batches(path, kind.schema.names, batch_rows=batch_rows):
            checked = check(kind, batch.columns, batch.rows, batch.unreadable)
            encoded = _kafka_encoded(kind, checked) if kafka else _encoded(kind, checked, stream.partitions)
            dead = [{"kind": kind.name, "file": str(path), **r} for r in checked.rejected.to_pylist()]
            if writing is not None:
                count(writing)  # at most one batch waits for Redis at a time
            writing = writer.submit(_write, stream, kind, encoded, dead)
            if progress is not None:
                progress(batch.progress)
        if writing is not None:
            count(writing)
    return counts


@dataclass(frozen=True)
class EventError:
    """Why one event of a `Producer.send` was not appended (it went to the dead-letter stream)."""

    index: int  # its position in the events sent (0-based)
    field: str  # the first field that broke a rule, or "(event)" when it is not an object at all
    reason: str
    value: str | None  # the offending value as JSON (shortened), as in the dead-letter stream


@dataclass(frozen=True)
class Sent:
    """What a `Producer.send` did: how many events were appended, and why each other one was not."""

    appended: int
    errors: list[EventError]

    @property
    def ok(self) -> bool:
        return not self.errors


class Producer:
    """Append a service's events to the stream as they happen, one or a few at a time, validated as the files
    `fraudserve stream produce` appends.

        producer = Producer(redis.Redis(...))                       # Redis Streams (the embedded default)
        producer = Producer(kafka=kafka_config(Settings()))         # or Kafka: FRAUDSERVE_KAFKA_* / the KafkaSource
        sent = producer.send_transactions([{"transaction_id": "t1", "card_id": "c1", ..., "event_timestamp": ...}])
        for error in sent.errors:  # the invalid events, also in the dead-letter stream (topic) with the reason
            log.warning("event %d rejected: %s %s", error.index, error.field, error.reason)

    Event times are RFC 3339 text with a zone or epoch milliseconds. `transactions` is the transaction event kind
    with the extra fields the Feast repo declares (default: `pipelines.events.transaction_kind()`, read on the first
    transaction sent); `partitions` must match the workers' (FRAUDSERVE_STREAM_PARTITIONS, Redis only); `source`
    names this producer in dead letters.

    On Kafka (`kafka`, a `pipelines.stream.kafka_log.KafkaConfig`) each valid event is one message, the SPEC event as
    JSON with its time in epoch milliseconds, keyed by card id (labels by transaction id) so that one card's events
    keep their order in one partition; the topics are created when missing. `send` returns once the brokers have
    every message of the call (`close` when done). Redis or Kafka errors are raised: then none of the events of that
    call is known to be appended.
    """

    def __init__(
        self, client: redis.Redis | None = None, transactions: EventKind | None = None, partitions: int = 1,
        source: str = "producer", kafka: KafkaConfig | None = None,
    ) -> None:  # fmt: skip
        self.stream: RedisStreamLog | KafkaLog
        if kafka is not None:
            from pipelines.stream.kafka_log import KafkaLog

            self.stream = KafkaLog(kafka, transactions)
        elif client is not None:
            self.stream = RedisStreamLog(client, partitions=partitions)
        else:
            raise ValueError(
                "Producer needs a target: a Redis client for Redis Streams (Producer(redis.Redis(...))), or "
                "kafka=KafkaConfig(...) for Kafka (pipelines.stream.kafka_log.kafka_config(settings))"
            )
        self.source = source
        self._transactions = transactions

    @property
    def transactions(self) -> EventKind:
        if self._transactions is None:
            self._transactions = transaction_kind()
        return self._transactions

    def send_transactions(self, events: Sequence[Mapping[str, Any]]) -> Sent:
        return self.send(self.transactions, events)

    def send_labels(self, events: Sequence[Mapping[str, Any]]) -> Sent:
        return self.send(LABELS, events)

    def send(self, kind: EventKind, events: Sequence[Mapping[str, Any]]) -> Sent:
        """Validate `events` of `kind` and append the valid ones, in order; each invalid one goes to the dead-letter
        stream (kind, source, index, field, reason, value and the event itself as JSON) and comes back in `errors`."""
        events = list(events)
        unreadable = {i: "event is not an object" for i, e in enumerate(events) if not isinstance(e, Mapping)}
        records = [{} if i in unreadable else e for i, e in enumerate(events)] if unreadable else events
        columns = {name: [record.get(name) for record in records] for name in kind.schema.names}
        checked = check(kind, columns, np.arange(len(events), dtype=np.int64), unreadable)
        errors = [
            EventError(int(r["row"]), "(event)" if r["field"] == "(line)" else r["field"], r["reason"], r["value"])
            for r in checked.rejected.to_pylist()
        ]
        dead = [
            {"kind": kind.name, "source": self.source, "index": e.index, "field": e.field, "reason": e.reason,
             "value": e.value, "event": json.dumps(events[e.index], default=str)}
            for e in errors
        ]  # fmt: skip
        if isinstance(self.stream, RedisStreamLog):
            encoded: tuple[list[str], Any] = _encoded(kind, checked, self.stream.partitions)
        else:
            self.stream.ensure_group()  # once: the topics exist after the first call
            encoded = _kafka_encoded(kind, checked)
        appended, _ = _write(self.stream, kind, encoded, dead)
        return Sent(appended, errors)

    def close(self) -> None:
        """Send what is still buffered (Kafka) and let go of the client."""
        if not isinstance(self.stream, RedisStreamLog):
            self.stream.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ the declared fields
@dataclass(frozen=True)
class DeclaredEvents:
    """What the Feast repo declares of the events: their fields, and their Kafka source if it is one."""

    transactions: EventKind
    kafka_source: KafkaEventSource | None


def declared_transaction_kind(home: Path, repo: Path | None = None) -> EventKind:
    """`transaction_kind()` with the Feast repo's extra fields (`declared_events`)."""
    return declared_events(home, repo).transactions


def declared_events(home: Path, repo: Path | None = None) -> DeclaredEvents:
    """`transaction_kind()` (the transaction events with the Feast repo's extra fields) and the transaction view's
    `KafkaSource` (or None), remembered under `home` by a digest of the repo's definitions and this run's
    FRAUDSERVE_ settings, so that a command that only produces events does not import Feast to read them again.

    The digest covers the repo's `.py` files, `feature_store.yaml` and `.feastignore`; a definition that imports a
    module from elsewhere is read again only when one of those (or a setting) changes."""
    from pipelines.features.catalog import KafkaEventSource, default_repo

    repo = (repo or default_repo()).resolve()
    digest = hashlib.sha256(str(repo).encode())
    for name, value in sorted(os.environ.items()):
        if name.startswith("FRAUDSERVE_"):
            digest.update(f"\0{name}={value}".encode())
    if repo.is_dir():
        for path in sorted(repo.rglob("*")):
            relative = path.relative_to(repo)
            if "__pycache__" in relative.parts or not path.is_file():
                continue
            if path.suffix == ".py" or path.name in ("feature_store.yaml", ".feastignore"):
                digest.update(f"\0{relative}\0".encode() + path.read_bytes())
    cache = home / "cache" / "transaction-fields.json"
    key = digest.hexdigest()
    try:
        remembered = json.loads(cache.read_text())
        if remembered.get("digest") == key:
            source = remembered["kafka_source"]
            return DeclaredEvents(
                with_extra_fields(remembered["extra_fields"]), KafkaEventSource(**source) if source else None
            )
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    from pipelines.features.catalog import load_catalog

    catalog = load_catalog(repo)
    kind = transaction_kind(catalog)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.tmp")
        source = catalog.kafka_source
        partial.write_text(
            json.dumps({"digest": key, "extra_fields": catalog.extra_fields, "kafka_source": source and vars(source)})
        )
        partial.replace(cache)
    except OSError:
        pass  # a read-only home: read the repo each time
    return DeclaredEvents(kind, catalog.kafka_source)
