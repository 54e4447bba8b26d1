"""Apache Kafka as the stream's transport, beside Redis Streams (`pipelines.stream.log.RedisStreamLog`).

Topics: transaction events, label events and dead letters. A message is one event as JSON (SPEC's fields; Feast's
`KafkaSource` with `JsonFormat`), keyed by card id (transactions) or transaction id (labels), so that one card's
events keep their order in one partition. Producers may be any program: the workers validate every message with the
rules of the offline pipeline (`pipelines.validation.check`) and send an invalid one to the dead-letter topic with
where it was (topic, partition, offset), the field, the reason and the value.

Workers are one consumer group: the broker spreads the partitions over them and moves a dead worker's partitions to
the others. A worker commits a partition's offsets only after the online writes of the events it read are done
(`ack`), so a worker killed mid-batch leaves those events to the next owner of the partition, and applying an event
twice changes nothing online (the updater's versioned writes).

Lateness is measured per partition, as Kafka Streams measures its stream time: Kafka orders events only within a
partition, and each partition is read at its own pace (librdkafka fetches a partition in chunks, and another worker
may own it), so a time shared by every partition would call the slower partitions' events late. A partition's stream
time (the newest event time read from it) is committed with its offsets (the commit's metadata), so the next owner
of the partition, after a rebalance or a restart, goes on from it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.events import LABELS, EventKind
from pipelines.stream.log import Entry
from pipelines.validation import check

if TYPE_CHECKING:
    from core.settings import Settings
    from pipelines.features.catalog import KafkaEventSource

log = logging.getLogger("fraudserve.stream")
# librdkafka's own log lines (a broker unreachable: one line per connection attempt) go through Python logging, served
# by the thread that polls the client, so that its threads never write to stderr themselves.
client_log = logging.getLogger("fraudserve.stream.kafka")
OUTAGE_S = 120  # how long a worker waits for the brokers to come back before it gives up (as for Redis)
STREAM_TIME = "stream_time_ms="  # the commit metadata of a transaction partition: its stream time
# How the group spreads partitions: "range" balances each topic on its own (with 2 workers and 4 partitions per
# topic, each worker gets 2 transaction and 2 label partitions). "cooperative-sticky" balances only the total count
# over both topics and keeps what a member owns: when a second worker joined one that owned everything, it was given
# the 4 label partitions and the first kept all 4 transaction partitions, so the second had nothing to do
# (bench.kafka with 2 workers: 0.60x Redis Streams; the group sampled from outside showed it). Range rebalances are
# eager (every member gives its partitions back and rejoins): a pause of about a heartbeat when a worker joins or
# leaves, and uncommitted events read again by their partition's owner, which the versioned writes make harmless.
ASSIGNMENT_STRATEGY = "range"
# The most a fetch brings of one partition (librdkafka's max.partition.fetch.bytes; default 1 MB, about 3,700 of the
# built-in events). Under a backlog a read of MAX_BATCH (8,000) is one partition's run only when the client has that
# many of the partition in a row (`_one_partition`): with 1 MB chunks a read mixed 3 partitions (0.37 distinct cards
# per event), with 4 MB 0.20, with 8 MB 0.185, as Redis Streams' one-partition reads (0.184; 93,854 events, 4
# partitions, scratch drain). The client's queue stays bounded by queued.max.messages.kbytes (64 MB).
PARTITION_FETCH_BYTES = 8 * 1024 * 1024

# Broker errors after which a commit is dropped, not raised: the partition moved to another worker (a rebalance),
# which reads again from the last committed offset; the events it re-applies change nothing online.
_REBALANCE_ERRORS = ("ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "REBALANCE_IN_PROGRESS", "_NO_OFFSET", "FENCED")


def _transient_codes(kafka: Any) -> tuple[int, ...]:
    """Errors of a broker that is away for a while (restarting): commits are kept and tried again."""
    error = kafka.KafkaError
    return (
        error._TRANSPORT, error._ALL_BROKERS_DOWN, error._TIMED_OUT, error._WAIT_COORD, error.COORDINATOR_NOT_AVAILABLE,
        error.NOT_COORDINATOR, error.COORDINATOR_LOAD_IN_PROGRESS, error.REQUEST_TIMED_OUT,
    )  # fmt: skip


class KafkaUnavailable(RuntimeError):
    """The brokers could not be reached or refused a request."""


@dataclass(frozen=True)
class KafkaConfig:
    """Where the events are: brokers, topics, the consumer group, and the client's security settings."""

    bootstrap: str
    transactions_topic: str
    labels_topic: str
    dead_letter_topic: str
    group: str = "fraudserve-features"
    partitions: int = 1  # for topics this module creates; existing topics keep theirs
    session_timeout_ms: int = 10_000
    # The consumer group protocol: "classic" (the client-side rebalance: every member rejoins, the leader assigns)
    # or "consumer" (KIP-848: the broker assigns, each member learns its share at its heartbeat; Kafka 4.x)
    group_protocol: str = "classic"
    security: Mapping[str, str] = field(default_factory=dict)  # librdkafka properties (SASL, TLS)
    source: str = "FRAUDSERVE_KAFKA_BOOTSTRAP"  # where the servers and the topic came from, for messages

    def client_config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "logger": client_log, **self.security, **extra}

    @property
    def topics(self) -> tuple[str, str]:
        return self.transactions_topic, self.labels_topic


def kafka_config(settings: Settings, source: KafkaEventSource | None = None) -> KafkaConfig | None:
    """The Kafka transport of this run, or None for Redis Streams.

    FRAUDSERVE_KAFKA_BOOTSTRAP set: the built-in topics on those brokers. Else the Feast repo's `KafkaSource` of the
    transaction events (`source`): its servers and topic. Security always from FRAUDSERVE_KAFKA_* settings."""
    security = {
        name: value
        for name, value in {
            "security.protocol": settings.kafka_security_protocol,
            "sasl.mechanism": settings.kafka_sasl_mechanism,
            "sasl.username": settings.kafka_sasl_username,
            "sasl.password": settings.kafka_sasl_password,
            "ssl.ca.location": settings.kafka_ssl_ca_location,
            "ssl.certificate.location": settings.kafka_ssl_certificate_location,
            "ssl.key.location": settings.kafka_ssl_key_location,
        }.items()
        if value
    }

    def build(bootstrap: str, topic: str, origin: str) -> KafkaConfig:
        return KafkaConfig(
            bootstrap, topic, settings.kafka_labels_topic, settings.kafka_dead_letter_topic, group=settings.kafka_group,
            partitions=settings.stream_partitions, session_timeout_ms=settings.kafka_session_timeout_ms,
            group_protocol=settings.kafka_group_protocol, security=security, source=origin,
        )  # fmt: skip

    if settings.kafka_bootstrap:
        return build(settings.kafka_bootstrap, settings.kafka_transactions_topic, "FRAUDSERVE_KAFKA_BOOTSTRAP")
    if source is not None:
        return build(source.bootstrap_servers, source.topic, f"the Feast KafkaSource {source.name}")
    return None


def stream_kafka(settings: Settings) -> KafkaConfig | None:
    """The stream's Kafka as every part finds it (the workers, `stream produce`, the label copy of the report):
    FRAUDSERVE_KAFKA_BOOTSTRAP, else the Feast repo's `KafkaSource` of the transaction events (`declared_events`:
    remembered under FRAUDSERVE_HOME, so the repo is read again only when it or a setting changed), else None
    (Redis Streams)."""
    if settings.kafka_bootstrap:
        return kafka_config(settings)
    from pipelines.stream.producer import declared_events

    return kafka_config(settings, declared_events(settings.home_dir).kafka_source)


def event_key(kind: str, event: Mapping[str, Any]) -> str:
    """The message key: a card's transactions share one partition (in order), a label goes by its transaction."""
    return str(event["card_id"] if kind != LABELS.name else event["transaction_id"])


def source_payload(payload: str, time_field: str) -> str:
    """An event as the stream's Redis entry encodes it (`..., "ts_ms": N}`, the last key) as a Kafka message: the
    same JSON with the time under the kind's own field (epoch milliseconds), as any other producer writes it."""
    head, marker, tail = payload.rpartition(',"ts_ms":')
    if not marker:
        head, marker, tail = payload.rpartition('{"ts_ms":')
        return '{"' + time_field + '":' + tail
    return head + ',"' + time_field + '":' + tail


@dataclass(frozen=True)
class KafkaEntry(Entry):
    """An event read from Kafka: where it was (topic, partition, offset) and when it was appended (the message's
    timestamp, for freshness)."""

    partition: int = 0
    offset: int = 0
    timestamp_ms: int = 0
    behind_ms: int = 0  # how far the event is older than the newest one read before it from its partition

    @property
    def appended_ms(self) -> int:
        return self.timestamp_ms


_DECODER = json.JSONDecoder()
# the C scanner json.loads ends in, without its per-call checks (encoding detection, whitespace)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _json_object(value: bytes | None) -> dict[str, Any] | str:
    """A message's JSON object, or why it is not one (for the dead letter). The message is decoded on its own, as
    `json.loads` would: a batch decoded as one joined array would let crafted invalid messages decode as valid
    events of others. C scanner first (16 of the 38 us per event the read took went to `json.loads`' checks and
    encoding detection); anything it does not take whole (whitespace around the object, an error) goes to
    `json.loads`, which then says what is wrong."""
    if value is not None:
        try:
            text = value.decode("utf-8")
            record, end = _SCAN(text, 0)
            if end == len(text) and type(record) is dict:
                return record
        except (UnicodeDecodeError, StopIteration, ValueError):
            pass
    try:
        record = json.loads(value)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        return f"not valid JSON: {exc}"
    return record if isinstance(record, dict) else "event is not a JSON object"


def _one_partition(messages: list[Any], count: int) -> tuple[list[Any], list[Any]]:
    """A read's batch and the messages held for the next read: when the first partition's run (the messages of one
    topic and partition at the head, in the order consumed) fills at least half of `count` and others follow it,
    the batch is that run alone.

    Why: the updater's cost is per entity state a batch touches, and the events are keyed by card, so a batch of
    one partition holds a quarter of the cards (4 partitions) with four times their events. librdkafka hands out
    each partition's fetched chunk in turn, so a read of 8,000 under a backlog mixed 2-4 partitions: 0.37 distinct
    cards per event against Redis Streams' 0.18 (whose read is one partition's), and the online store's Redis spent
    61 us per event against 42-45. Small reads (a steady rate, whatever arrived since the last one) are left whole:
    holding events back there would only add to their freshness."""
    batch, held = messages[:count], messages[count:]
    if not batch:
        return [], held
    head = (batch[0].topic(), batch[0].partition())
    run = 1
    while run < len(batch) and (batch[run].topic(), batch[run].partition()) == head:
        run += 1
    if run < len(batch) and run * 2 >= count:
        return batch[:run], batch[run:] + held
    return batch, held


def _rdkafka() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:  # pragma: no cover - the extra is part of dev
        raise KafkaUnavailable("the Kafka transport needs confluent-kafka: pip install 'fraudserve[kafka]'") from exc
    return confluent_kafka


class KafkaLog:
    """The worker's event log on Kafka: `read` a batch (validated, invalid ones dead-lettered), `ack` it (commit).

    `kinds` maps each topic's event kind name to its `EventKind` (the transaction kind with the Feast repo's extra
    fields); `consumer` names this worker's client in the group."""

    def __init__(self, config: KafkaConfig, transactions: EventKind | None = None) -> None:
        from pipelines.events import TRANSACTIONS

        self.config = config
        self.kinds = {config.transactions_topic: transactions or TRANSACTIONS, config.labels_topic: LABELS}
        self.partitions = config.partitions
        self._producer: Any = None
        self._consumer: Any = None
        self._admin: Any = None  # for the lag (`partition_lag`): the topics' partitions and end offsets
        self._offsets_reader: Any = None  # for the lag: the group's committed offsets (`_group_committed`)
        self._read_up_to: dict[tuple[str, int], int] = {}  # next offset per partition of what was read, not acked
        self._sent: dict[tuple[str, int], int] = {}  # the newest offset whose commit was sent, per partition
        self._landed: dict[tuple[str, int], int] = {}  # the newest offset the broker confirmed, per partition
        self._commit_failure: Any = None  # a commit refused for good (not a rebalance, not an outage)
        self._stream_time: dict[tuple[str, int], int | None] = {}  # newest event time read, per transaction partition
        self._held: list[Any] = []  # messages consumed but not yet returned by `read` (`_one_partition`), in order
        self._ensured = False

    # ----------------------------------------------------------------------------------------------- topics
    def ensure_group(self, wait_s: float = OUTAGE_S) -> None:
        """Create the three topics when missing (`partitions` each, the brokers' replication). Brokers that do not
        answer (restarting) are waited for up to `wait_s`."""
        if self._ensured:
            return
        kafka = _rdkafka()
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        refused: list[str] = []  # authentication errors: credentials, not an outage, so no waiting
        untrusted: list[str] = []  # TLS handshakes that failed: the certificates, not an outage either

        def errors(error: Any) -> None:
            if error.code() == kafka.KafkaError._AUTHENTICATION:
                refused.append(error.str())
            elif error.code() == kafka.KafkaError._SSL:
                untrusted.append(error.str())

        admin = AdminClient(self.config.client_config(error_cb=errors))
        wanted = [self.config.transactions_topic, self.config.labels_topic, self.config.dead_letter_topic]
        deadline = time.monotonic() + wait_s
        warned = time.monotonic()
        while True:
            try:
                # short attempts, so that refused credentials or an untrusted certificate (the client's error
                # events, served by `poll`) are told at once rather than after a long metadata timeout
                existing = set(admin.list_topics(timeout=1).topics)
                break
            except kafka.KafkaException as exc:
                admin.poll(0)  # serves the client's error events (an authentication refused is one)
                if refused:
                    raise KafkaUnavailable(
                        f"Kafka at {self.config.bootstrap} refused this client's credentials ({refused[-1]}): check "
                        "FRAUDSERVE_KAFKA_SECURITY_PROTOCOL, FRAUDSERVE_KAFKA_SASL_MECHANISM, "
                        "FRAUDSERVE_KAFKA_SASL_USERNAME and FRAUDSERVE_KAFKA_SASL_PASSWORD"
                    ) from exc
                if untrusted:
                    raise KafkaUnavailable(
                        f"the TLS handshake with Kafka at {self.config.bootstrap} failed ({untrusted[-1]}): check "
                        "FRAUDSERVE_KAFKA_SECURITY_PROTOCOL (SSL or SASL_SSL for a TLS listener), "
                        "FRAUDSERVE_KAFKA_SSL_CA_LOCATION (the PEM of the CA that signed the brokers' certificates) "
                        "and, for mutual TLS, FRAUDSERVE_KAFKA_SSL_CERTIFICATE_LOCATION and "
                        "FRAUDSERVE_KAFKA_SSL_KEY_LOCATION"
                    ) from exc
                if time.monotonic() > deadline:
                    raise KafkaUnavailable(
                        f"Kafka at {self.config.bootstrap} did not answer ({self.config.source}): {exc}"
                    ) from exc
                if time.monotonic() - warned >= 10:
                    log.warning("Kafka unavailable; waiting", extra={"error": str(exc)})
                    warned = time.monotonic()
                time.sleep(0.2)
        missing = [NewTopic(t, num_partitions=self.config.partitions) for t in wanted if t not in existing]
        for topic, future in (admin.create_topics(missing, operation_timeout=15) if missing else {}).items():
            try:
                future.result()
            except kafka.KafkaException as exc:
                if exc.args[0].code() != kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaUnavailable(f"could not create the Kafka topic {topic}: {exc}") from exc
        self._group_timeouts(admin)
        self._ensured = True

    # --------------------------------------------------------------------------------------------- producing
    @property
    def producer(self) -> Any:
        if self._producer is None:
            self._producer = _rdkafka().Producer(
                self.config.client_config(
                    # murmur2 as the Java clients: a key lands in the same partition whichever client wrote it
                    partitioner="murmur2_random",
                    **{"linger.ms": 5, "enable.idempotence": True},
                )
            )
        return self._producer

    def append_encoded(self, kind: str, payloads: Sequence[str], keys: Sequence[str]) -> int:
        """Write events (JSON text, as other producers would) keyed by `keys`, and wait until the brokers have them."""
        topic = self.config.labels_topic if kind == LABELS.name else self.config.transactions_topic
        failed: list[str] = []

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                failed.append(str(error))

        producer = self.producer
        for payload, key in zip(payloads, keys, strict=True):
            while True:
                try:
                    producer.produce(topic, payload.encode(), key.encode(), on_delivery=delivered)
                    break
                except BufferError:  # the client's queue is full: let it send
                    producer.poll(0.1)
            producer.poll(0)
        self.flush()
        if failed:
            raise KafkaUnavailable(f"{len(failed)} events were not written to {topic}: {failed[0]}")
        return len(payloads)

    def append(self, kind: str, events: Sequence[dict[str, Any]]) -> int:
        """Write validated events (times as `ts_ms`) as `append_encoded` writes them."""
        time_field = LABELS.time_field if kind == LABELS.name else "event_timestamp"
        payloads = [source_payload(json.dumps(e, separators=(",", ":")), time_field) for e in events]
        return self.append_encoded(kind, payloads, [event_key(kind, e) for e in events])

    def dead_letter(self, rows: Sequence[dict[str, Any]]) -> int:
        """Write rejected events to the dead-letter topic, one JSON message each (row, field, reason, value, ...)."""
        for row in rows:
            self.producer.produce(self.config.dead_letter_topic, json.dumps(row, default=str).encode())
            self.producer.poll(0)
        if rows:
            self.flush()
        return len(rows)

    def flush(self, timeout_s: float = 60) -> None:
        if self._producer is not None and self._producer.flush(timeout_s) > 0:
            raise KafkaUnavailable(f"Kafka at {self.config.bootstrap} did not take the events within {timeout_s} s")

    # --------------------------------------------------------------------------------------------- consuming
    def consumer(self, name: str) -> Any:
        if self._consumer is None:
            self._consumer = _rdkafka().Consumer(
                self.config.client_config(
                    **{
                        "group.id": self.config.group,
                        "client.id": name,
                        "enable.auto.commit": False,  # committed in `ack`, after the online writes
                        "auto.offset.reset": "earliest",
                        "on_commit": self._committed,  # the outcome of `ack`'s asynchronous commits
                        "max.partition.fetch.bytes": PARTITION_FETCH_BYTES,
                        **self._group_settings(),
                    }
                )
            )
            self._consumer.subscribe(list(self.config.topics), on_revoke=self._revoked)
        return self._consumer

    @property
    def heartbeat_ms(self) -> int:
        """A member learns of a rebalance (a worker joining or leaving) at its next heartbeat, and with range
        assignment every member waits for the others: 250 ms at most (a heartbeat is a few bytes to the group
        coordinator), not session / 5."""
        return min(max(self.config.session_timeout_ms // 10, 100), 250)

    def _group_settings(self) -> dict[str, Any]:
        """The client's group settings. The consumer protocol (KIP-848) takes neither a session timeout nor a
        heartbeat nor an assignor from the client: the broker has them (`_group_timeouts` sets this group's), and
        assigns with its range assignor, which balances each topic on its own as `ASSIGNMENT_STRATEGY` does."""
        if self.config.group_protocol == "consumer":
            return {"group.protocol": "consumer", "group.remote.assignor": "range"}
        if self.config.group_protocol != "classic":
            raise ValueError(
                f"FRAUDSERVE_KAFKA_GROUP_PROTOCOL is {self.config.group_protocol!r}: use classic or consumer"
            )
        return {
            "session.timeout.ms": self.config.session_timeout_ms,
            "heartbeat.interval.ms": self.heartbeat_ms,
            "partition.assignment.strategy": ASSIGNMENT_STRATEGY,
        }

    def _group_timeouts(self, admin: Any) -> None:
        """With the consumer protocol, this group's session timeout and heartbeat on the broker (a group config,
        KIP-848): FRAUDSERVE_KAFKA_SESSION_TIMEOUT_MS as with the classic protocol. A broker whose minimums are higher
        (group.consumer.min.session.timeout.ms, 45 s by default; group.consumer.min.heartbeat.interval.ms, 5 s)
        refuses them: its own values stay, and a warning says which broker settings to lower."""
        if self.config.group_protocol != "consumer":
            return
        kafka = _rdkafka()
        from confluent_kafka.admin import (  # type: ignore[attr-defined]
            AlterConfigOpType,
            ConfigEntry,
            ConfigResource,
            ResourceType,
        )

        resource = ConfigResource(
            ResourceType.GROUP, self.config.group,
            incremental_configs=[
                ConfigEntry("consumer.session.timeout.ms", str(self.config.session_timeout_ms),
                            incremental_operation=AlterConfigOpType.SET),
                ConfigEntry("consumer.heartbeat.interval.ms", str(self.heartbeat_ms),
                            incremental_operation=AlterConfigOpType.SET),
            ],
        )  # fmt: skip
        try:
            admin.incremental_alter_configs([resource])[resource].result()
        except kafka.KafkaException as exc:
            log.warning(
                "the broker kept its own session timeout and heartbeat for this group: lower its "
                "group.consumer.min.session.timeout.ms and group.consumer.min.heartbeat.interval.ms to use "
                "FRAUDSERVE_KAFKA_SESSION_TIMEOUT_MS",
                extra={"error": str(exc), "group": self.config.group},
            )

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        """Partitions taken away: their asynchronous commits still in flight are made once more, synchronously (the
        generation is still valid while partitions are revoked), so that their next owner starts after every event
        applied here; then what was read of them is forgotten (the next owner reads it from the commit)."""
        kafka = _rdkafka()
        keys = [(tp.topic, tp.partition) for tp in partitions]
        sent = [
            kafka.TopicPartition(t, p, self._sent[(t, p)], self._commit_metadata(t, p))
            for t, p in keys
            if self._sent.get((t, p), -1) > self._landed.get((t, p), -1)
        ]
        if sent:
            try:
                consumer.commit(offsets=sent, asynchronous=False)
            except kafka.KafkaException as exc:  # the next owner re-reads them: applying twice changes nothing
                log.warning("commit of revoked partitions refused", extra={"error": str(exc)})
        gone = set(keys)
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]  # re-read by the next owner
        for key in keys:
            self._read_up_to.pop(key, None)
            self._sent.pop(key, None)
            self._landed.pop(key, None)
            self._stream_time.pop(key, None)

    def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` valid events of the partitions this worker owns; invalid ones go to the dead-letter topic
        (and are committed with the batch).

        A large read is one partition's events where it can be (`_one_partition`): messages read past the end of
        the first partition's run are held for the next read, not applied now."""
        kafka = _rdkafka()
        client = self.consumer(consumer)
        fresh: list[Any] = []
        if len(self._held) < count:
            if self._held:  # something to apply already: no waiting
                fresh = client.consume(num_messages=count - len(self._held), timeout=0)
            else:
                # As XREADGROUP's BLOCK: wait for the first message only, then take what the client has fetched
                # already, up to `count`. (consume(count, timeout) waits until `count` messages have come or the
                # timeout has passed: at 2,000 events/s, 250 ms of waiting before each batch of 500.)
                fresh = client.consume(num_messages=1, timeout=block_ms / 1000)
                if fresh and count > 1:
                    fresh += client.consume(num_messages=count - 1, timeout=0)
        messages = self._held  # what a rebalance during `consume` left of them (`_revoked`)
        self._held = []
        for message in fresh:
            error = message.error()
            if error is not None:
                if error.code() == kafka.KafkaError._PARTITION_EOF:
                    continue
                if error.fatal():
                    raise KafkaUnavailable(f"Kafka consumer failed: {error}")
                log.warning("Kafka consumer error", extra={"error": str(error)})
                continue
            messages.append(message)
        batch, self._held = _one_partition(messages, count)
        by_topic: dict[str, list[Any]] = {}
        for message in batch:
            by_topic.setdefault(message.topic(), []).append(message)
            self._read_up_to[(message.topic(), message.partition())] = message.offset() + 1
        entries: list[Entry] = []
        for topic, chunk in by_topic.items():
            entries += self._validated(topic, chunk)
        if batch and not entries:
            self.commit()  # only dead letters (already written): nothing to wait for
        return entries

    def _validated(self, topic: str, messages: list[Any]) -> list[Entry]:
        kind = self.kinds[topic]
        records: list[Any] = []
        unreadable: dict[int, str] = {}
        for index, message in enumerate(messages):
            record = _json_object(message.value())
            if isinstance(record, str):
                unreadable[index] = record
                record = {}
            records.append(record)
        columns = {name: [r.get(name) for r in records] for name in kind.schema.names}
        checked = check(kind, columns, np.arange(len(messages), dtype=np.int64), unreadable)
        if checked.rejected.num_rows:
            self.dead_letter([self._dead(kind, messages[int(r["row"])], r) for r in checked.rejected.to_pylist()])
        from pipelines.stream.producer import normalized

        events = normalized(kind, checked.valid) if checked.valid.num_rows else []
        timed = topic == self.config.transactions_topic
        if timed and events:
            self._load_stream_times({message.partition() for message in messages})
        entries: list[Entry] = []
        stream_time = self._stream_time
        name = kind.name
        for event, row in zip(events, checked.valid_rows.tolist(), strict=True):
            message = messages[row]
            partition, offset = message.partition(), message.offset()
            behind = 0
            if timed:  # messages of one partition come in offset order: the stream time as each one arrived
                key = (topic, partition)
                newest, ts_ms = stream_time.get(key), event["ts_ms"]
                if newest is None or ts_ms > newest:
                    stream_time[key] = ts_ms
                else:
                    behind = newest - ts_ms
            timestamp_ms = message.timestamp()[1]
            entries.append(
                KafkaEntry(
                    f"{topic}/{partition}/{offset}", name, event, topic, partition, offset,
                    timestamp_ms if timestamp_ms > 0 else 0, behind,
                )
            )  # fmt: skip
        return entries

    def _load_stream_times(self, partitions: set[int]) -> None:
        """The stream time of transaction partitions read for the first time since they were assigned: what their
        last commit carries (its metadata), or none (a partition never committed, or committed by another tool)."""
        topic = self.config.transactions_topic
        unknown = [p for p in sorted(partitions) if (topic, p) not in self._stream_time]
        if not unknown or self._consumer is None:
            return
        kafka = _rdkafka()
        try:
            committed = self._consumer.committed([kafka.TopicPartition(topic, p) for p in unknown], timeout=10)
        except kafka.KafkaException as exc:  # reporting only: the partition's time starts again from what is read
            log.warning("Kafka did not give the partitions' stream time", extra={"error": str(exc)})
            committed = [kafka.TopicPartition(topic, p) for p in unknown]
        for tp in committed:
            self._stream_time[(topic, tp.partition)] = stream_time_of(tp.metadata)

    @staticmethod
    def late(entries: Sequence[Entry], lateness_ms: int) -> int:
        """Transactions that reached their partition more than `lateness_ms` after a newer event of the same
        partition (the stream time when each was read): folded into their windows all the same, but reported."""
        return sum(1 for e in entries if isinstance(e, KafkaEntry) and e.behind_ms > lateness_ms)

    @staticmethod
    def _dead(kind: EventKind, message: Any, rejected: Mapping[str, Any]) -> dict[str, Any]:
        raw = message.value() or b""
        return {
            "kind": kind.name,
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "row": f"{message.topic()}[{message.partition()}]@{message.offset()}",
            "field": "(message)" if rejected["field"] == "(line)" else rejected["field"],
            "reason": rejected["reason"],
            "value": rejected["value"],
            "event": raw.decode("utf-8", "replace")[:4096],
        }

    def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Entry]:
        """Nothing to claim: the group moves a dead worker's partitions, uncommitted events included."""
        return []

    def ack(self, entries: Sequence[Entry]) -> None:
        """Commit what was read (the events given and the dead letters read with them): call after the online writes.

        Asynchronously: the worker goes on reading while the broker writes the commit (a synchronous commit held the
        worker for a round trip per batch: 0.55-0.60 s of an 11 s drain of 32,951 events, measured). The outcome is
        served by the client during the next reads (`_committed`): a commit refused by a rebalance or an outage is
        made again, one refused for good is raised by the next commit. A commit lost with its worker only means that
        the partition's next owner reads those events again, which the versioned writes make harmless."""
        self.commit(asynchronous=True)

    def commit(self, asynchronous: bool = False) -> None:
        """Commit the offsets read so far. A commit refused during a rebalance is kept and tried again (next `ack`
        or idle `lag`): a partition that stays with this worker would otherwise never be committed to its end (its
        events are past this consumer's position); one that moved is forgotten (`_revoked`) and re-read by its new
        owner from the last commit.

        A synchronous commit (an idle worker's `lag`) also makes again the asynchronous ones not yet confirmed, so
        that when it returns the broker has every offset this worker applied: the group's lag is then true."""
        if self._commit_failure is not None:
            failure, self._commit_failure = self._commit_failure, None
            raise KafkaUnavailable(f"Kafka refused this worker's commit: {failure}")
        if self._consumer is None:
            return
        attempted = dict(self._read_up_to)
        if not asynchronous:
            for key, offset in self._sent.items():
                if offset > self._landed.get(key, -1):
                    attempted[key] = max(offset, attempted.get(key, -1))
        if not attempted:
            return
        kafka = _rdkafka()
        offsets = [kafka.TopicPartition(t, p, o, self._commit_metadata(t, p)) for (t, p), o in attempted.items()]
        self._read_up_to.clear()
        for key, offset in attempted.items():
            self._sent[key] = max(offset, self._sent.get(key, -1))
        if asynchronous:
            self._consumer.commit(offsets=offsets, asynchronous=True)
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except kafka.KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not self._refused_for_now(kafka, error):
                raise
            self._again(attempted, error.name() if error is not None else "")
            return
        for key, offset in attempted.items():
            self._landed[key] = max(offset, self._landed.get(key, -1))

    @staticmethod
    def _refused_for_now(kafka: Any, error: Any) -> bool:
        """A commit refused by a rebalance or by brokers away for a while: made again, not raised."""
        if error is None:
            return False
        name = error.name()
        retriable = error.retriable() or error.code() in _transient_codes(kafka)
        return retriable or any(marker in name for marker in _REBALANCE_ERRORS)

    def _again(self, attempted: Mapping[tuple[str, int], int], reason: str) -> None:
        """Offsets whose commit was refused for now: kept for the next commit, for the partitions still owned."""
        for key, offset in attempted.items():  # newer reads of the same partition win
            self._read_up_to[key] = max(offset, self._read_up_to.get(key, offset))
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()} if self._consumer else set()
        for key in set(self._read_up_to) - owned:
            del self._read_up_to[key]
        log.warning("commit refused (a rebalance, or the brokers unreachable); retried", extra={"error": reason})

    def _committed(self, error: Any, partitions: list[Any]) -> None:
        """The outcome of an asynchronous commit (served by the client during `read`). A refused one is made again
        unless a newer commit of the partition was sent since (it carries the newer offset)."""
        kafka = _rdkafka()
        refused: dict[tuple[str, int], int] = {}
        for tp in partitions:
            failure = error if error is not None else tp.error
            key = (tp.topic, tp.partition)
            if failure is None:
                if key in self._sent:  # a partition revoked since is forgotten, not confirmed
                    self._landed[key] = max(tp.offset, self._landed.get(key, -1))
                continue
            if not self._refused_for_now(kafka, failure):
                self._commit_failure = failure  # raised by the next commit: not one to wait out
                return
            if tp.offset >= self._sent.get(key, -1):
                refused[key] = tp.offset
        if refused:
            self._again(refused, str(error or next(tp.error for tp in partitions if tp.error is not None)))

    def _commit_metadata(self, topic: str, partition: int) -> str:
        """What a commit of a transaction partition carries: its stream time (every event read is committed)."""
        newest = self._stream_time.get((topic, partition))
        return "" if newest is None else f"{STREAM_TIME}{newest}"

    def close(self) -> None:
        if self._consumer is not None:
            # forgotten before it closes: the callbacks its close serves (the revoke's last commit, `_committed`)
            # then do not call back into a closing client
            consumer, self._consumer = self._consumer, None
            consumer.close()  # leaves the group now: its partitions move without waiting for the timeout
        self._held = []  # never applied nor committed: the partitions' next owner reads them
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
        if self._offsets_reader is not None:
            self._offsets_reader.close()
            self._offsets_reader = None
        self._admin = None

    # ------------------------------------------------------------------------------------------------- lag
    def partition_lag(self, timeout_s: float = 10) -> list[dict[str, Any]]:
        """Per partition of the event topics: the broker's end offset, the group's committed offset, and the lag.

        Not through the worker's consumer: the broker answers a connection's requests in order, and the consumer's
        connection is held by its fetch (up to fetch.wait.max.ms, 500 ms, when there is nothing to read), so each
        of the nine requests this took on the consumer waited about 0.5 s: an idle worker's `lag` took 4.5 s, during
        which it read nothing. The partitions and end offsets come from an admin client (batched requests), the
        committed offsets from a consumer of its own (`_group_committed`), never from the admin client: see there."""
        kafka = _rdkafka()
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self.config.client_config())
        admin = self._admin
        try:
            metadata = admin.list_topics(timeout=timeout_s)
            partitions = [
                kafka.TopicPartition(topic, p)
                for topic in self.config.topics
                if topic in metadata.topics
                for p in sorted(metadata.topics[topic].partitions)
            ]
            if not partitions:
                return []
            spec: Any = OffsetSpec  # untyped
            ends = admin.list_offsets({tp: spec.latest() for tp in partitions}, request_timeout=timeout_s)
            starts = admin.list_offsets({tp: spec.earliest() for tp in partitions}, request_timeout=timeout_s)
            committed = self._group_committed(partitions, timeout_s)
            admin.poll(0)  # the admin client's log lines, as the consumer's
            rows = []
            for tp in partitions:
                key = (tp.topic, tp.partition)
                high = ends[tp].result().offset
                low = starts[tp].result().offset
                offset = committed.get(key, -1)
                position = offset if offset >= 0 else low
                rows.append(
                    {"topic": tp.topic, "partition": tp.partition, "end": high, "committed": max(offset, -1),
                     "lag": max(high - position, 0)}
                )  # fmt: skip
            return rows
        except kafka.KafkaException as exc:
            raise KafkaUnavailable(f"Kafka at {self.config.bootstrap} did not answer: {exc}") from exc

    def _group_committed(self, partitions: list[Any], timeout_s: float) -> dict[tuple[str, int], int]:
        """The group's committed offset per partition (-1: none), asked by a consumer of the group that never
        subscribes (so it never joins the group nor takes partitions) on connections of its own.

        Not by the admin client's `list_consumer_group_offsets`: librdkafka 2.16.1 (confluent-kafka 2.16.1, the
        newest) frees a coordinator request's state when the request cannot be sent (the broker away) and then reads
        it again (`rd_kafka_admin_coord_response_parse`: "Assertion `eonce->refcnt > 0' failed", or a SIGSEGV when
        the freed memory is reused; librdkafka PR #5397, open). A worker asks for its lag whenever it reads nothing,
        so while a broker restarted it asked this every half second and died: every worker of 3 runs of 2 workers
        under 3 broker restarts each (the SIGSEGV of the broker-restart test). The consumer's OffsetFetch goes
        through its group coordinator code instead, which has no such path."""
        if self._offsets_reader is None:
            self._offsets_reader = _rdkafka().Consumer(
                self.config.client_config(**{"group.id": self.config.group, "enable.auto.commit": False})
            )
        committed = self._offsets_reader.committed(partitions, timeout=timeout_s)
        self._offsets_reader.poll(0)  # its log lines (`client_log`): served here, else they pile up in its queue
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else -1 for tp in committed}

    def lag(self) -> dict[str, int]:
        """As `RedisStreamLog.lag`: events not yet committed by the group (`pending` is always 0 on Kafka)."""
        self.commit()  # one refused by a rebalance or an outage, again (one refused for good is raised)
        try:
            rows = self.partition_lag(timeout_s=5)
        except KafkaUnavailable as exc:  # the brokers are away (restarting): not idle; the client reconnects itself
            log.warning("Kafka unavailable; lag unknown", extra={"error": str(exc)})
            return {"lag": -1, "pending": 0, "length": -1}
        return {"lag": sum(r["lag"] for r in rows), "pending": 0, "length": sum(r["end"] for r in rows)}

    def dead_letter_count(self, timeout_s: float = 10) -> int:
        """Messages in the dead-letter topic (end minus start offsets over its partitions)."""
        kafka = _rdkafka()
        probe = kafka.Consumer(self.config.client_config(**{"group.id": f"{self.config.group}-status"}))
        try:
            metadata = probe.list_topics(self.config.dead_letter_topic, timeout=timeout_s)
            topic = metadata.topics.get(self.config.dead_letter_topic)
            if topic is None or topic.error is not None:
                return 0
            total = 0
            for p in topic.partitions:
                low, high = probe.get_watermark_offsets(
                    kafka.TopicPartition(self.config.dead_letter_topic, p), timeout=timeout_s
                )
                total += high - low
            return total
        finally:
            probe.close()


def stream_time_of(metadata: str | None) -> int | None:
    """A partition's stream time from its commit's metadata (`STREAM_TIME`), or None when it carries none."""
    if metadata and metadata.startswith(STREAM_TIME):
        try:
            return int(metadata[len(STREAM_TIME) :])
        except ValueError:
            return None
    return None


def read_dead_letters(
    config: KafkaConfig, timeout_s: float = 10, stop: Callable[[], bool] = lambda: False
) -> list[dict[str, Any]]:
    """Every message of the dead-letter topic, decoded (for tests and inspection)."""
    kafka = _rdkafka()
    consumer = kafka.Consumer(
        config.client_config(**{"group.id": f"{config.group}-dead-letter-reader", "enable.auto.commit": False})
    )
    try:
        metadata = consumer.list_topics(config.dead_letter_topic, timeout=timeout_s)
        topic = metadata.topics[config.dead_letter_topic]
        assignment = []
        ends = {}
        for p in topic.partitions:
            low, high = consumer.get_watermark_offsets(kafka.TopicPartition(config.dead_letter_topic, p))
            if high > low:
                assignment.append(kafka.TopicPartition(config.dead_letter_topic, p, low))
                ends[p] = high
        consumer.assign(assignment)
        rows: list[dict[str, Any]] = []
        remaining = dict(ends)
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline and not stop():
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is not None:
                    continue
                rows.append(json.loads(message.value()))
                if message.offset() + 1 >= remaining.get(message.partition(), 0):
                    remaining.pop(message.partition(), None)
        return rows
    finally:
        consumer.close()
