"""Per-event online updates, exactly once in effect.

Each entity keeps its recent events in a Redis hash under a Cluster hash tag (`fraudserve:{card:c1}:events`),
keyed by transaction id, so a redelivered or duplicated event rewrites the same field and changes nothing. After
new events land, each touched entity's features are recomputed from its whole recent history with the pure
definitions of `pipelines.features.semantics` (the ones the offline SQL is tested against), at the entity's
latest event time, and written in Feast's Redis layout. Concurrent workers need no locks: each entity's history
has a version counter in its own slot, a recompute is stamped with the version it read, and the row write (a
one-key script) keeps only the newest stamp, so the last row standing reflects every event stored. Every command
touches one key or keys of one hash tag, so the same code runs on a single Redis and on a Redis Cluster.
Out-of-order events are therefore exact as long as they are still in the kept history (window plus the allowed
lateness).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
from redis.crc import key_slot

from pipelines.features.catalog import (
    ENTITIES,
    MERCHANT,
    TRANSACTION,
    TRANSACTION_FIELDS,
    EntitySpec,
    features_of,
    max_window,
)
from pipelines.features.semantics import Event, Label, evaluate
from pipelines.online_layout import encode_ts, encode_value, entity_key, feature_field, ts_field

TXN_MERCHANT = "fraudserve:txn-merchant"


def state_key(entity: EntitySpec, key: str) -> str:
    return f"fraudserve:{{{entity.name}:{key}}}:events"


def version_key(entity: EntitySpec, key: str) -> str:
    """The entity's history version, in the same hash-tag slot as its history."""
    return f"fraudserve:{{{entity.name}:{key}}}:version"


def version_field(view: str) -> str:
    """The field of Feast's row hash that holds the history version the view's values were computed from."""
    return f"_v:{view}"


# KEYS[1] Feast's row hash; ARGV: version field, version, then field, value, ... Writes only a newer computation.
GUARDED_WRITE = """
local stored = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if stored >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 3))
return 1
"""


class KeyedPipeline:
    """Single-key commands, pipelined: on one connection, or on a cluster one plain pipeline per master.

    On a cluster the slot of each command's key is computed here. redis-py's ClusterPipeline resolves every command
    on its own (and asks a server for each EVAL's keys: COMMAND GETKEYS, one extra round trip per call, which was
    a third of a worker's time). A command that meets a MOVED or ASK reply (slots being moved between masters) is
    sent again through the cluster client, which follows the redirection; every command here may run twice
    without harm (HSET of the same value, the guarded write, INCR before a read: a higher version is still safe).
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self.commands: list[tuple[Any, ...]] = []

    def add(self, command: str, key: bytes | str, *args: Any) -> None:
        self.commands.append((command, key, *args))

    def script(self, script: str, key: bytes, *args: Any) -> int:
        """EVAL of a script over one key; returns the index of its reply."""
        self.commands.append(("EVAL", script, 1, key, *args))
        return len(self.commands) - 1

    @staticmethod
    def _key(command: tuple[Any, ...]) -> Any:
        return command[3] if command[0] == "EVAL" else command[1]

    def execute(self) -> list[Any]:
        if not self.commands:
            return []
        if not self.cluster:
            pipe = self.client.pipeline(transaction=False)
            for command in self.commands:
                pipe.execute_command(*command)
            return list(pipe.execute())
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for index, command in enumerate(self.commands):
            key = self._key(command)
            node = self.client.nodes_manager.get_node_from_slot(key_slot(key.encode() if isinstance(key, str) else key))
            pipe, indices = by_node.setdefault(node.name, (node.redis_connection.pipeline(transaction=False), []))
            pipe.execute_command(*command)
            indices.append(index)
        replies: list[Any] = [None] * len(self.commands)
        for pipe, indices in by_node.values():
            for index, reply in zip(indices, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, redis.ResponseError) and str(reply).startswith(("MOVED", "ASK")):
                    replies[index] = self.client.execute_command(*self.commands[index])
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    replies[index] = reply
        return replies


def labels_key(merchant: str) -> str:
    return f"fraudserve:{{merchant:{merchant}}}:labels"


def pending_labels_key(transaction_id: str) -> str:
    return f"fraudserve:pending-labels:{transaction_id}"


def _pack(event: dict[str, Any]) -> str:
    return json.dumps(
        [event["ts_ms"], event["amount"], event["card_id"], event["merchant_id"], event["country"],
         event.get("device_id"), event.get("ip_address")],
        separators=(",", ":"),
    )  # fmt: skip


def _flat(mapping: dict[bytes | str, bytes]) -> list[bytes | str]:
    return [item for pair in mapping.items() for item in pair]


def _unpack(transaction_id: str, raw: bytes) -> Event:
    ts, amount, card, merchant, country, device, ip = json.loads(raw)
    return Event(transaction_id, int(ts), card, merchant, float(amount), country, device, ip)


@dataclass
class BatchResult:
    transactions: int = 0
    labels: int = 0
    late: int = 0
    recomputed: int = 0
    superseded: int = 0  # rows not written: another worker had already written a newer computation
    touched: set[tuple[str, str]] = field(default_factory=set)


class OnlineUpdater:
    def __init__(self, client: redis.Redis, project: str, lateness: timedelta = timedelta(minutes=5)) -> None:
        # redis-py's sync methods are typed as `Awaitable[T] | T`; this module uses the sync client only.
        self.client: Any = client
        self.project = project.encode()
        self.lateness_ms = int(lateness.total_seconds() * 1000)
        self.entities = {e.name: e for e in ENTITIES}

    # ---------------------------------------------------------------------------------------------- ingest
    def apply(self, transactions: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]]) -> BatchResult:
        """Store a batch of validated events and bring every touched entity's online features up to date."""
        result = BatchResult(transactions=len(transactions), labels=len(labels))
        pipe = KeyedPipeline(self.client)
        for event in transactions:
            tid = event["transaction_id"]
            packed = _pack(event)
            for entity in ENTITIES:
                key = event.get(entity.join_key)
                if key is not None:
                    pipe.add("HSET", state_key(entity, key), tid, packed)
                    result.touched.add((entity.name, key))
            pipe.add("HSET", TXN_MERCHANT, tid, event["merchant_id"])
            record = {**event, "event_time_ms": event["ts_ms"]}
            mapping: dict[bytes | str, bytes] = {
                feature_field(TRANSACTION.view, name): encode_value(record.get(name), dtype)
                for name, dtype in TRANSACTION_FIELDS.items()
            }
            mapping[ts_field(TRANSACTION.view)] = encode_ts(event["ts_ms"])
            pipe.add("HSET", entity_key(self.project, TRANSACTION.join_key, tid), *_flat(mapping))
        pipe.execute()
        self._attach_pending([e["transaction_id"] for e in transactions], result)
        for label in labels:
            self._store_label(label, result)
        touched = [(self.entities[name], key) for name, key in sorted(result.touched)]
        self._recompute(touched, result)
        result.recomputed = len(touched)
        return result

    def _store_label(self, label: dict[str, Any], result: BatchResult) -> None:
        tid = label["transaction_id"]
        member = f"{tid}|{label['ts_ms']}|{int(label['is_fraud'])}"
        merchant = self.client.hget(TXN_MERCHANT, tid)
        if merchant is None:
            # The transaction has not arrived yet: park the label, then look again (it may have arrived meanwhile).
            self.client.sadd(pending_labels_key(tid), member)
            merchant = self.client.hget(TXN_MERCHANT, tid)
            if merchant is None:
                return
        self.client.hset(labels_key(merchant.decode()), member, b"1")
        result.touched.add((MERCHANT.name, merchant.decode()))

    def _attach_pending(self, transaction_ids: Iterable[str], result: BatchResult) -> None:
        for tid in transaction_ids:
            members = self.client.smembers(pending_labels_key(tid))
            if not members:
                continue
            merchant = self.client.hget(TXN_MERCHANT, tid)
            assert merchant is not None
            self.client.hset(labels_key(merchant.decode()), mapping=dict.fromkeys(members, b"1"))
            self.client.delete(pending_labels_key(tid))
            result.touched.add((MERCHANT.name, merchant.decode()))

    # ----------------------------------------------------------------------------------------------- compute
    def _compute(
        self, entity: EntitySpec, key: str, raw: dict[bytes, bytes], label_members: list[bytes]
    ) -> tuple[dict[bytes | str, bytes], list[str]] | None:
        """The entity's online row at its latest event, and the history entries too old to keep."""
        events = [_unpack(tid.decode(), value) for tid, value in raw.items()]
        if not events:
            return None
        latest = max(e.ts_ms for e in events)
        keep_from = latest - int(max_window(entity).total_seconds() * 1000) - self.lateness_ms
        stale = [e.transaction_id for e in events if e.ts_ms < keep_from]
        labels: dict[str, list[Label]] = {}
        for member in label_members:
            tid, ts, fraud = member.decode().rsplit("|", 2)
            labels.setdefault(tid, []).append(Label(tid, fraud == "1", int(ts)))
        mapping: dict[bytes | str, bytes] = {
            feature_field(entity.view, f.name): encode_value(evaluate(f, events, latest, labels), f.dtype)
            for f in features_of(entity)
        }
        mapping[ts_field(entity.view)] = encode_ts(latest)
        return mapping, stale

    def _recompute(self, touched: list[tuple[EntitySpec, str]], result: BatchResult) -> None:
        """Recompute every touched entity from its stored history: two pipelined round trips, no locks, no retries.

        Each entity has a version counter in its own hash-tag slot. Per entity, in this order on its node: INCR
        the version (v), then read the history. Every event stored before an INCR <= v is in what is read, so
        the row computed from it may carry v. The write keeps the row only if it carries a higher version than
        the one stored (`GUARDED_WRITE`, one key, so it runs on a cluster too): whichever worker read last writes
        last, and an older computation arriving late changes nothing.
        """
        if not touched:
            return
        reads = KeyedPipeline(self.client)
        for entity, key in touched:
            reads.add("INCRBY", version_key(entity, key), 1)
            reads.add("HGETALL", state_key(entity, key))
            if entity is MERCHANT:
                reads.add("HKEYS", labels_key(key))
        replies = iter(reads.execute())
        writes = KeyedPipeline(self.client)
        guarded: list[int] = []
        for entity, key in touched:
            version, raw = next(replies), next(replies)
            members = next(replies) if entity is MERCHANT else []
            computed = self._compute(entity, key, raw, members)
            if computed is None:
                continue
            mapping, stale = computed
            row = entity_key(self.project, entity.join_key, key)
            guarded.append(writes.script(GUARDED_WRITE, row, version_field(entity.view), int(version), *_flat(mapping)))
            if stale:
                writes.add("HDEL", state_key(entity, key), *stale)
        written = writes.execute()
        result.superseded += sum(1 for index in guarded if written[index] == 0)
