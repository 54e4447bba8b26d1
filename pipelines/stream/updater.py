"""Per-event online updates, exactly once in effect, for every window view the Feast repo declares.

The catalog (`pipelines.features.catalog.load_catalog`) says what to keep and compute: each entity with window views
(built-in or a data engineer's) keeps its recent events in a Redis hash under a Cluster hash tag
(`fraudserve:{card:c1}:events`), keyed by transaction id, each entry holding the event fields its views read, so a
redelivered or duplicated event rewrites the same field and changes nothing. After new events land, each touched
entity's views are all recomputed from its whole recent history with the pure definitions of
`pipelines.features.semantics` (the ones the offline SQL is tested against), at the entity's latest event time, and
written in Feast's Redis layout. Concurrent workers need no locks: each entity's history has a version counter in its
own slot, a recompute is stamped with the version it read, and each view's row write (a one-key script) keeps only the
newest stamp, so the last row standing reflects every event stored. Labels reach the label set of every entity of
their transaction that has a fraud_rate feature. Every command touches one key or keys of one hash tag, so the same
code runs on a single Redis and on a Redis Cluster. Out-of-order events are therefore exact as long as they are still
in the kept history (the entity's longest window plus the allowed lateness).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
from redis.crc import key_slot

from pipelines.features.catalog import TRANSACTION_VIEW, Catalog, EntitySpec, WindowView, load_catalog
from pipelines.features.semantics import Event, Label, evaluate
from pipelines.online_layout import encode_ts, encode_value, entity_key, feature_field, ts_field

# Transaction id -> JSON {entity name: key} for the entities whose views need labels (fraud_rate): where a label goes.
TXN_KEYS = "fraudserve:txn-label-keys"
# Transaction id -> merchant id, as updaters before `TXN_KEYS` wrote it: read (never written) for labels of those.
LEGACY_TXN_MERCHANT = "fraudserve:txn-merchant"
# Layout id -> JSON list of the event fields an entity's history entries hold (see `HistoryLayout`).
LAYOUTS = "fraudserve:stream:layouts"


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


def labels_key(entity: EntitySpec, key: str) -> str:
    """Labels of the transactions of an entity with a fraud_rate feature (`fraudserve:{merchant:m1}:labels`)."""
    return f"fraudserve:{{{entity.name}:{key}}}:labels"


def pending_labels_key(transaction_id: str) -> str:
    return f"fraudserve:pending-labels:{transaction_id}"


# Entries written before history layouts had ids: [ts, amount, card, merchant, country, device, ip].
_LEGACY_FIELDS = ("amount", "card_id", "merchant_id", "country", "device_id", "ip_address")


@dataclass(frozen=True)
class HistoryLayout:
    """The event fields one entity's history entries hold (those its views read), in a fixed order.

    An entry is a compact JSON list, `[layout id, ts_ms, value, ...]`. The id names the field list, which is kept in
    Redis (`LAYOUTS`), so entries stored before the catalog changed (a view added, another column read) still read
    right by their own layout; a field an entry lacks reads as null.
    """

    fields: tuple[str, ...]

    @property
    def id(self) -> str:
        return format(zlib.crc32(json.dumps(self.fields).encode()), "08x")

    def pack(self, record: dict[str, Any], ts_ms: int) -> str:
        return json.dumps([self.id, ts_ms, *(record.get(name) for name in self.fields)], separators=(",", ":"))


def _flat(mapping: dict[bytes | str, bytes]) -> list[bytes | str]:
    return [item for pair in mapping.items() for item in pair]


@dataclass
class BatchResult:
    transactions: int = 0
    labels: int = 0
    late: int = 0
    recomputed: int = 0
    superseded: int = 0  # rows not written: another worker had already written a newer computation
    touched: set[tuple[str, str]] = field(default_factory=set)


class OnlineUpdater:
    """Keeps every window view of the catalog (`load_catalog()` unless given) up to date from the events."""

    def __init__(
        self,
        client: redis.Redis,
        project: str,
        lateness: timedelta = timedelta(minutes=5),
        catalog: Catalog | None = None,
    ) -> None:
        # redis-py's sync methods are typed as `Awaitable[T] | T`; this module uses the sync client only.
        self.client: Any = client
        self.project = project.encode()
        self.lateness_ms = int(lateness.total_seconds() * 1000)
        self.catalog = catalog if catalog is not None else load_catalog()
        self.transaction_key = self.catalog.transaction.join_key
        self.entities = {e.name: e for e in self.catalog.window_entities}
        self.views: dict[str, tuple[WindowView, ...]] = {n: self.catalog.views_of(e) for n, e in self.entities.items()}
        self.layouts = {
            name: HistoryLayout(tuple(sorted({c for view in views for c in view.columns})))
            for name, views in self.views.items()
        }
        self.retention_ms = {
            name: int(self.catalog.max_window(e).total_seconds() * 1000) + self.lateness_ms
            for name, e in self.entities.items()
        }
        # An entity with a windowless feature (seconds_since_prev) keeps its newest event older than the retention.
        self.keeps_previous = {
            name: any(f.window is None for view in views for f in view.features) for name, views in self.views.items()
        }
        self.label_entities = tuple(
            e for name, e in self.entities.items() if any(view.needs_labels for view in self.views[name])
        )
        self._known_layouts: dict[str, tuple[str, ...] | None] = {lay.id: lay.fields for lay in self.layouts.values()}
        self._layouts_saved = False

    # ---------------------------------------------------------------------------------------------- ingest
    def apply(self, transactions: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]]) -> BatchResult:
        """Store a batch of validated events and bring every touched entity's online features up to date."""
        result = BatchResult(transactions=len(transactions), labels=len(labels))
        if not self._layouts_saved and self.layouts:
            # Before any entry of these layouts is stored, so that every worker can read every entry.
            self.client.hset(LAYOUTS, mapping={lay.id: json.dumps(lay.fields) for lay in self.layouts.values()})
        self._layouts_saved = True
        pipe = KeyedPipeline(self.client)
        for event in transactions:
            tid = event[self.transaction_key]
            ts_ms = int(event["ts_ms"])
            record = {**event, "event_time_ms": ts_ms}
            label_keys: dict[str, str] = {}
            packed: dict[str, str] = {}  # by layout id: entities whose views read the same fields share an entry
            for name, entity in self.entities.items():
                key = record.get(entity.join_key)
                if key is None:
                    continue
                layout = self.layouts[name]
                if layout.id not in packed:
                    packed[layout.id] = layout.pack(record, ts_ms)
                pipe.add("HSET", state_key(entity, key), tid, packed[layout.id])
                result.touched.add((name, key))
                label_keys[name] = key
            if self.label_entities:
                keys = {e.name: label_keys[e.name] for e in self.label_entities if e.name in label_keys}
                pipe.add("HSET", TXN_KEYS, tid, json.dumps(keys, separators=(",", ":")))
            mapping: dict[bytes | str, bytes] = {
                feature_field(TRANSACTION_VIEW, name): encode_value(record.get(name), dtype)
                for name, dtype in self.catalog.transaction_fields.items()
            }
            mapping[ts_field(TRANSACTION_VIEW)] = encode_ts(ts_ms)
            pipe.add("HSET", entity_key(self.project, self.transaction_key, tid), *_flat(mapping))
        pipe.execute()
        if self.label_entities:
            self._attach_pending([e[self.transaction_key] for e in transactions], result)
            for label in labels:
                self._store_label(label, result)
        touched = [(self.entities[name], key) for name, key in sorted(result.touched)]
        self._recompute(touched, result)
        result.recomputed = len(touched)
        return result

    def _store_label(self, label: dict[str, Any], result: BatchResult) -> None:
        tid = label["transaction_id"]
        member = f"{tid}|{label['ts_ms']}|{int(label['is_fraud'])}"
        keys = self.client.hget(TXN_KEYS, tid)
        if keys is None:
            keys = self._legacy_keys(tid)
        if keys is None:
            # The transaction has not arrived yet: park the label, then look again (it may have arrived meanwhile).
            self.client.sadd(pending_labels_key(tid), member)
            keys = self.client.hget(TXN_KEYS, tid)
            if keys is None:
                return
        self._file_labels(json.loads(keys), {member.encode(): b"1"}, result)

    def _legacy_keys(self, tid: str) -> str | None:
        """A transaction stored before `TXN_KEYS` existed: its merchant, from the old map (`LEGACY_TXN_MERCHANT`)."""
        if not any(e.name == "merchant" for e in self.label_entities):
            return None
        merchant = self.client.hget(LEGACY_TXN_MERCHANT, tid)
        return None if merchant is None else json.dumps({"merchant": merchant.decode()})

    def _attach_pending(self, transaction_ids: Sequence[str], result: BatchResult) -> None:
        reads = KeyedPipeline(self.client)
        for tid in transaction_ids:
            reads.add("SMEMBERS", pending_labels_key(tid))
        for tid, members in zip(transaction_ids, reads.execute(), strict=True):
            if not members:
                continue
            keys = self.client.hget(TXN_KEYS, tid)
            assert keys is not None
            self._file_labels(json.loads(keys), dict.fromkeys(members, b"1"), result)
            self.client.delete(pending_labels_key(tid))

    def _file_labels(self, keys: dict[str, str], members: dict[bytes, bytes], result: BatchResult) -> None:
        """Add labels to the label set of each entity (with a fraud_rate feature) of their transaction."""
        for entity in self.label_entities:
            key = keys.get(entity.name)
            if key is not None:
                self.client.hset(labels_key(entity, key), mapping=members)
                result.touched.add((entity.name, key))

    # ----------------------------------------------------------------------------------------------- compute
    def _layout_fields(self, layout: str) -> tuple[str, ...]:
        if layout not in self._known_layouts:
            stored = self.client.hget(LAYOUTS, layout)
            self._known_layouts[layout] = tuple(json.loads(stored)) if stored is not None else None
        return self._known_layouts[layout] or ()

    def _unpack(self, transaction_id: str, raw: bytes) -> Event:
        entry = json.loads(raw)
        if not isinstance(entry[0], str):  # legacy: [ts, amount, card, merchant, country, device, ip]
            return Event(transaction_id, int(entry[0]), dict(zip(_LEGACY_FIELDS, entry[1:], strict=False)))
        names = self._layout_fields(entry[0])
        return Event(transaction_id, int(entry[1]), dict(zip(names, entry[2:], strict=False)))

    def _compute(
        self, entity: EntitySpec, raw: dict[bytes, bytes], label_members: list[bytes]
    ) -> tuple[list[tuple[WindowView, dict[bytes | str, bytes]]], list[str]] | None:
        """Each of the entity's view rows at its latest event, and the history entries too old to keep."""
        events = [self._unpack(tid.decode(), value) for tid, value in raw.items()]
        if not events:
            return None
        latest = max(e.ts_ms for e in events)
        keep_from = latest - self.retention_ms[entity.name]
        old = [e for e in events if e.ts_ms < keep_from]
        if old and self.keeps_previous[entity.name]:
            newest_old = max(e.ts_ms for e in old)
            old = [e for e in old if e.ts_ms < newest_old]
        labels: dict[str, list[Label]] = {}
        for member in label_members:
            tid, ts, fraud = member.decode().rsplit("|", 2)
            labels.setdefault(tid, []).append(Label(tid, fraud == "1", int(ts)))
        rows: list[tuple[WindowView, dict[bytes | str, bytes]]] = []
        for view in self.views[entity.name]:
            mapping: dict[bytes | str, bytes] = {
                feature_field(view.view, f.name): encode_value(evaluate(f, events, latest, labels), f.dtype)
                for f in view.features
            }
            mapping[ts_field(view.view)] = encode_ts(latest)
            rows.append((view, mapping))
        return rows, [e.transaction_id for e in old]

    def _recompute(self, touched: list[tuple[EntitySpec, str]], result: BatchResult) -> None:
        """Recompute every touched entity from its stored history: two pipelined round trips, no locks, no retries.

        Each entity has a version counter in its own hash-tag slot. Per entity, in this order on its node: INCR
        the version (v), then read the history. Every event stored before an INCR <= v is in what is read, so
        the rows computed from it may carry v. Each view's write keeps the row only if it carries a higher version
        than the one stored for that view (`GUARDED_WRITE`, one key, so it runs on a cluster too): whichever worker
        read last writes last, and an older computation arriving late changes nothing.
        """
        if not touched:
            return
        label_names = {e.name for e in self.label_entities}
        reads = KeyedPipeline(self.client)
        for entity, key in touched:
            reads.add("INCRBY", version_key(entity, key), 1)
            reads.add("HGETALL", state_key(entity, key))
            if entity.name in label_names:
                reads.add("HKEYS", labels_key(entity, key))
        replies = iter(reads.execute())
        writes = KeyedPipeline(self.client)
        guarded: list[int] = []
        for entity, key in touched:
            version, raw = next(replies), next(replies)
            members = next(replies) if entity.name in label_names else []
            computed = self._compute(entity, raw, members)
            if computed is None:
                continue
            rows, stale = computed
            row = entity_key(self.project, entity.join_key, key)
            for view, mapping in rows:
                guarded.append(
                    writes.script(GUARDED_WRITE, row, version_field(view.view), int(version), *_flat(mapping))
                )
            if stale:
                writes.add("HDEL", state_key(entity, key), *stale)
        written = writes.execute()
        result.superseded += sum(1 for index in guarded if written[index] == 0)
