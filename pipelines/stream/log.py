"""The event log: a small interface, and Redis Streams behind it (a Kafka source could implement the same)."""

from __future__ import annotations

import json
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

    @property
    def appended_ms(self) -> int:
        return int(self.id.split("-", 1)[0])


class EventLog(Protocol):
    def append(self, kind: str, events: Sequence[dict[str, Any]]) -> int: ...

    def dead_letter(self, rows: Sequence[dict[str, Any]]) -> int: ...

    def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]: ...

    def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Entry]: ...

    def ack(self, ids: Sequence[str]) -> None: ...


class RedisStreamLog:
    """Redis Streams with one consumer group: XADD, XREADGROUP, XACK, and XAUTOCLAIM for a dead worker's entries."""

    def __init__(self, client: redis.Redis, stream: str = EVENTS, group: str = GROUP) -> None:
        # redis-py's sync methods are typed as `Awaitable[T] | T`; this module uses the sync client only.
        self.client: Any = client
        self.stream = stream
        self.group = group

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def append(self, kind: str, events: Sequence[dict[str, Any]]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.stream, {"kind": kind, "event": json.dumps(event, separators=(",", ":"))})
        pipe.execute()
        return len(events)

    def dead_letter(self, rows: Sequence[dict[str, Any]]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for row in rows:
            pipe.xadd(DEAD_LETTER, {k: json.dumps(v) if not isinstance(v, str) else v for k, v in row.items()})
        pipe.execute()
        return len(rows)

    @staticmethod
    def _entries(raw: Any) -> list[Entry]:
        entries = []
        for entry_id, fields in raw:
            if not fields:  # deleted while pending
                continue
            key = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
            entries.append(Entry(key, fields[b"kind"].decode(), json.loads(fields[b"event"])))
        return entries

    def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        reply = self.client.xreadgroup(self.group, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return self._entries(reply[0][1]) if reply else []

    def claim_stale(self, consumer: str, idle_ms: int, count: int) -> list[Entry]:
        reply = self.client.xautoclaim(self.stream, self.group, consumer, min_idle_time=idle_ms, count=count)
        return self._entries(reply[1])

    def ack(self, ids: Sequence[str]) -> None:
        if ids:
            self.client.xack(self.stream, self.group, *ids)

    def lag(self) -> dict[str, int]:
        """Entries not yet delivered (lag) and delivered but not acknowledged (pending)."""
        try:
            groups = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:
            return {"lag": 0, "pending": 0, "length": 0}
        info = next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)
        length = int(self.client.xlen(self.stream))
        if info is None:
            return {"lag": length, "pending": 0, "length": length}
        lag = info.get("lag")
        if lag is None:  # Redis did not keep the group's read counter (a restart replays the AOF without it)
            lag = self._undelivered(info["last-delivered-id"])
        return {"lag": int(lag), "pending": int(info["pending"]), "length": length}

    def _undelivered(self, last_delivered: bytes | str, chunk: int = 10_000) -> int:
        """Entries after the group's last delivered id, counted (only when Redis cannot say: lag reads as 0
        otherwise, and a worker run `--until-idle` would stop with the stream not drained)."""
        start = last_delivered.decode() if isinstance(last_delivered, bytes) else str(last_delivered)
        count = 0
        while True:
            entries = self.client.xrange(self.stream, min=f"({start}", max="+", count=chunk)
            count += len(entries)
            if len(entries) < chunk:
                return count
            last = entries[-1][0]
            start = last.decode() if isinstance(last, bytes) else str(last)
