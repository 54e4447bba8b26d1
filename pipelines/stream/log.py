"""The event log: a small interface, and Redis Streams behind it (a Kafka source could implement the same)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis

EVENTS = "fraudserve:events"
DEAD_LETTER = "fraudserve:dead-letter"
GROUP = "fraudserve-features"


@dataclass(frozen=True)
class Entry:
    id: str
    kind: str  # "transaction" or "label"
    event: dict[str, Any]  # validated, timestamps as epoch milliseconds
    stream: str = EVENTS  # the partition it was read from

    @property
    def appended_ms(self) -> int:
        return int(self.id.split("-", 1)[0])


class EventLog(Protocol):
    def append(self, kind: str, events: Sequence[dict[str, Any]]) -> int: ...

    def dead_letter(self, rows: Sequence[dict[str, Any]]) -> int: ...

    def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]: ...

    def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Entry]: ...

    def ack(self, entries: Sequence[Entry]) -> None: ...


def partition_keys(stream: str, partitions: int) -> list[str]:
    """The stream keys: the name itself for one partition; else one key per partition, each its own hash tag, so
    that a Redis Cluster spreads them (and the stream's load) over its nodes."""
    return [stream] if partitions == 1 else [f"{stream}:{{{p}}}" for p in range(partitions)]


def partition_of(kind: str, event: dict[str, Any], partitions: int) -> int:
    """Transactions by card (a card's events stay in order), labels by transaction id; stable across processes."""
    if partitions == 1:
        return 0
    key = event["card_id"] if kind == "transaction" else event["transaction_id"]
    return zlib.crc32(str(key).encode()) % partitions


APPEND_CHUNK = 5_000  # XADDs per pipelined round trip


def _bulk(text: str) -> bytes:
    """A RESP bulk string."""
    data = text.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


class RedisStreamLog:
    """Redis Streams with one consumer group: XADD, XREADGROUP, XACK, and XAUTOCLAIM for a dead worker's entries.

    With `partitions` > 1 the events are spread over that many stream keys, each with the same consumer group;
    every worker reads from every partition, and the group shares each partition's entries among the workers.
    Producers and workers must agree on the number (FRAUDSERVE_STREAM_PARTITIONS)."""

    def __init__(self, client: redis.Redis, stream: str = EVENTS, group: str = GROUP, partitions: int = 1) -> None:
        if partitions < 1:
            raise ValueError(f"stream partitions must be at least 1, got {partitions}")
        # redis-py's sync methods are typed as `Awaitable[T] | T`; this module uses the sync client only.
        self.client: Any = client
        self.stream = stream
        self.group = group
        self.partitions = partitions
        self.streams = partition_keys(stream, partitions)
        self._next = 0  # the partition the next read starts at (round robin, so none starves)

    def ensure_group(self) -> None:
        for stream in self.streams:
            try:
                self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def append(self, kind: str, events: Sequence[dict[str, Any]]) -> int:
        """Append validated events (timestamps as epoch milliseconds `ts_ms`): one entry each, `kind` and `event`
        (the event as compact JSON)."""
        payloads = [json.dumps(event, separators=(",", ":")) for event in events]
        partitions = [partition_of(kind, event, self.partitions) for event in events] if self.partitions > 1 else None
        return self.append_encoded(kind, payloads, partitions)

    def append_encoded(self, kind: str, payloads: Sequence[str], partitions: Sequence[int] | None = None) -> int:
        """Append events already encoded as `append` encodes them; `partitions` holds each one's partition
        (`partition_of`), None with one partition. Each partition keeps the order of its events.

        The XADDs go in chunks of APPEND_CHUNK, pipelined (not a transaction): on a single Redis written as the
        commands' own bytes on one connection and the replies read back one by one, several times faster than
        redis-py's pipeline for many small commands; on a Redis Cluster through redis-py's cluster pipeline."""
        groups: dict[str, Sequence[str]] = {self.streams[0]: payloads}
        if partitions is not None and self.partitions > 1:
            by_partition: dict[str, list[str]] = {}
            for payload, partition in zip(payloads, partitions, strict=True):
                by_partition.setdefault(self.streams[partition], []).append(payload)
            groups = dict(by_partition)
        for stream, events in groups.items():
            for start in range(0, len(events), APPEND_CHUNK):
                self._xadd(stream, kind, events[start : start + APPEND_CHUNK])
        return len(payloads)

    def _xadd(self, stream: str, kind: str, payloads: Sequence[str]) -> None:
        if not isinstance(self.client, redis.Redis):
            pipe = self.client.pipeline(transaction=False)
            for payload in payloads:
                pipe.execute_command("XADD", stream, "*", "kind", kind, "event", payload)
            pipe.execute()
            return
        # XADD <stream> * kind <kind> event <payload>, in RESP: an array of 7 bulk strings.
        head = b"*7\r\n$4\r\nXADD\r\n%b$1\r\n*\r\n$4\r\nkind\r\n%b$5\r\nevent\r\n" % (_bulk(stream), _bulk(kind))
        encoded = [payload.encode() for payload in payloads]
        command = b"".join([b"%b$%d\r\n%b\r\n" % (head, len(e), e) for e in encoded])
        pool = self.client.connection_pool
        connection: Any = pool.get_connection()  # redis-py's Connection (untyped)
        try:
            connection.send_packed_command([command])
            failed: redis.ResponseError | None = None
            for _ in encoded:  # every reply is read, even after an error, so the connection stays in step
                try:
                    connection.read_response()
                except redis.ResponseError as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed
        except BaseException:
            connection.disconnect()  # a connection left mid-reply must not go back to the pool as it is
            raise
        finally:
            pool.release(connection)

    def dead_letter(self, rows: Sequence[dict[str, Any]]) -> int:
        """Append rejected events to DEAD_LETTER, one entry each: every field as text (JSON for what is not)."""
        if not rows:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for row in rows:
            pipe.xadd(DEAD_LETTER, {k: json.dumps(v) if not isinstance(v, str) else v for k, v in row.items()})
        pipe.execute()
        return len(rows)

    @staticmethod
    def _entries(raw: Any, stream: str) -> list[Entry]:
        entries = []
        for entry_id, fields in raw:
            if not fields:  # deleted while pending
                continue
            key = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            # decoded to text first: json.loads of bytes guesses their encoding each time (a twentieth of a
            # worker's CPU at 8,000 events a read)
            entries.append(Entry(key, fields[b"kind"].decode(), json.loads(fields[b"event"].decode()), stream))
        return entries

    def _read_one(self, stream: str, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.client.xreadgroup(self.group, consumer, {stream: ">"}, count=count, block=block_ms)
        return self._entries(reply[0][1], stream) if reply else []

    def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` new entries of one partition; waits up to `block_ms` when every partition is empty."""
        if self.partitions == 1:
            return self._read_one(self.stream, consumer, count, block_ms)
        for step in range(self.partitions):  # without waiting, from the partition after the last one read
            index = (self._next + step) % self.partitions
            entries = self._read_one(self.streams[index], consumer, count, None)
            if entries:
                self._next = index + 1
                return entries
        # All empty: wait on one partition at a time (a cluster cannot block on keys of several nodes at once),
        # briefly, so that an entry arriving in another partition waits at most that long.
        self._next += 1
        return self._read_one(self.streams[self._next % self.partitions], consumer, count, min(block_ms, 50))

    def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Entry]:
        entries: list[Entry] = []
        for stream in self.streams:
            reply = self.client.xautoclaim(stream, self.group, consumer, min_idle_time=idle_ms, count=count)
            entries += self._entries(reply[1], stream)
            if len(entries) >= count:
                break
        return entries

    def ack(self, entries: Sequence[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        for stream, ids in by_stream.items():
            self.client.xack(stream, self.group, *ids)

    def lag(self) -> dict[str, int]:
        """Entries not yet delivered (lag) and delivered but not acknowledged (pending), over every partition."""
        total = {"lag": 0, "pending": 0, "length": 0}
        for stream in self.streams:
            for name, value in self._lag(stream).items():
                total[name] += value
        return total

    def _lag(self, stream: str) -> dict[str, int]:
        try:
            groups = self.client.xinfo_groups(stream)
        except redis.ResponseError:
            return {"lag": 0, "pending": 0, "length": 0}
        info = next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)
        length = int(self.client.xlen(stream))
        if info is None:
            return {"lag": length, "pending": 0, "length": length}
        lag = info.get("lag")
        if lag is None:  # Redis did not keep the group's read counter (a restart replays the AOF without it)
            lag = self._undelivered(stream, info["last-delivered-id"])
        return {"lag": int(lag), "pending": int(info["pending"]), "length": length}

    def _undelivered(self, stream: str, last_delivered: bytes | str, chunk: int = 10_000) -> int:
        """Entries after the group's last delivered id, counted (only when Redis cannot say: lag reads as 0
        otherwise, and a worker run `--until-idle` would stop with the stream not drained)."""
        start = last_delivered.decode() if isinstance(last_delivered, bytes) else str(last_delivered)
        count = 0
        while True:
            entries = self.client.xrange(stream, min=f"({start}", max="+", count=chunk)
            count += len(entries)
            if len(entries) < chunk:
                return count
            last = entries[-1][0]
            start = last.decode() if isinstance(last, bytes) else str(last)
