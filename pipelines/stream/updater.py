"""Per-event online updates, exactly once in effect, for every window view the Feast repo declares.

The catalog (`pipelines.features.catalog.load_catalog`) says what to compute: each entity with window views
(built-in or a data engineer's) keeps incremental window state in Redis under a Cluster hash tag
(`fraudserve:{card:c1}:st`, `...:win`, see `pipelines.stream.window_state`). A batch is one round trip of per-entity
script calls that fold the new events and labels into that state and answer each feature at the entity's latest
event time, then one round trip of row writes in Feast's Redis layout. The cost per event does not grow with the
entity's history: what leaves a window is read by time range, what stays is never re-read. Each script call runs
atomically on its entity's slot and a redelivered event is already a member of its window set, so duplicates change
nothing and two workers on one entity need no lock; each row write (a one-key script) keeps only the newest state
version, so the last row standing reflects every event folded. Labels reach every entity of their transaction
that has a fraud_rate feature. Every command touches one key or keys of one hash tag, so the same code runs on a
single Redis and on a Redis Cluster. Histories kept by the previous (recomputing) updater are folded into the new
state on the entity's first batch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
from redis.crc import key_slot

from pipelines.features.catalog import TRANSACTION_VIEW, Catalog, WindowView, load_catalog
from pipelines.features.semantics import Event
from pipelines.online_layout import encode_ts, encode_value, entity_key, feature_field, ts_field
from pipelines.stream.window_state import FOLD, EntityPlan, decode, plan_entity, state_of

# Transaction id -> JSON {entity name: key} for the entities whose views need labels (fraud_rate): where a label goes.
TXN_KEYS = "fraudserve:txn-label-keys"
# Transaction id -> merchant id, as updaters before `TXN_KEYS` wrote it: read (never written) for labels of those.
LEGACY_TXN_MERCHANT = "fraudserve:txn-merchant"
# Layout id -> JSON list of the event fields an entity's history entries hold (see `HistoryLayout`).
LAYOUTS = "fraudserve:stream:layouts"


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
        self.scripts: dict[str, str] = {}

    def add(self, command: str, key: bytes | str, *args: Any) -> None:
        self.commands.append((command, key, *args))

    def script(self, script: str, key: bytes | str, *args: Any) -> int:
        """EVAL of a script over one key; returns the index of its reply."""
        return self.script_keys(script, [key], *args)

    def script_keys(self, script: str, keys: Sequence[bytes | str], *args: Any) -> int:
        """A script over keys of one slot, sent by its SHA1 (EVALSHA; loaded where a server lacks it)."""
        sha = _sha(script)
        self.scripts[sha] = script
        self.commands.append(("EVALSHA", sha, len(keys), *keys, *args))
        return len(self.commands) - 1

    @staticmethod
    def _key(command: tuple[Any, ...]) -> Any:
        return command[3] if command[0] == "EVALSHA" else command[1]

    def _resend(self, command: tuple[Any, ...]) -> Any:
        """A command again through the client (which follows MOVED/ASK), a script as EVAL (loads it)."""
        if command[0] == "EVALSHA":
            return self.client.execute_command("EVAL", self.scripts[command[1]], *command[2:])
        return self.client.execute_command(*command)

    def execute(self) -> list[Any]:
        if not self.commands:
            return []
        if not self.cluster:
            pipe = self.client.pipeline(transaction=False)
            for command in self.commands:
                pipe.execute_command(*command)
            replies = list(pipe.execute(raise_on_error=False))
            for index, reply in enumerate(replies):
                if isinstance(reply, redis.exceptions.NoScriptError):
                    replies[index] = self._resend(self.commands[index])
                elif isinstance(reply, Exception):
                    raise reply
            return replies
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for index, command in enumerate(self.commands):
            key = self._key(command)
            node = self.client.nodes_manager.get_node_from_slot(key_slot(key.encode() if isinstance(key, str) else key))
            pipe, indices = by_node.setdefault(node.name, (node.redis_connection.pipeline(transaction=False), []))
            pipe.execute_command(*command)
            indices.append(index)
        answers: list[Any] = [None] * len(self.commands)
        for pipe, indices in by_node.values():
            for index, reply in zip(indices, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(reply, redis.exceptions.NoScriptError) or (
                    isinstance(reply, redis.ResponseError) and str(reply).startswith(("MOVED", "ASK"))
                ):
                    answers[index] = self._resend(self.commands[index])
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    answers[index] = reply
        return answers


def pending_labels_key(transaction_id: str) -> str:
    return f"fraudserve:pending-labels:{transaction_id}"


# Entries written before history layouts had ids: [ts, amount, card, merchant, country, device, ip].
_LEGACY_FIELDS = ("amount", "card_id", "merchant_id", "country", "device_id", "ip_address")


@dataclass(frozen=True)
class HistoryLayout:
    """The event fields of the previous updater's history entries (read when an entity's history is folded in).

    An entry is a compact JSON list, `[layout id, ts_ms, value, ...]`. The id names the field list, kept in Redis
    (`LAYOUTS`); a field an entry lacks reads as null.
    """

    fields: tuple[str, ...]

    @property
    def id(self) -> str:
        return format(zlib.crc32(json.dumps(self.fields).encode()), "08x")


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def _flat(mapping: dict[bytes | str, bytes]) -> list[bytes | str]:
    return [item for pair in mapping.items() for item in pair]


@dataclass
class BatchResult:
    transactions: int = 0
    labels: int = 0
    late: int = 0
    recomputed: int = 0  # entities whose rows were brought up to date
    superseded: int = 0  # rows not written: another worker had already written a newer state
    touched: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class _Pending:
    """One entity's share of a batch: its new events (script arguments) and labels."""

    events: list[Any] = field(default_factory=list)
    labels: list[list[Any]] = field(default_factory=list)


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
        self.plans: dict[str, EntityPlan] = {n: plan_entity(e, self.views[n]) for n, e in self.entities.items()}
        self.label_entities = tuple(
            e for name, e in self.entities.items() if any(view.needs_labels for view in self.views[name])
        )
        self._known_layouts: dict[str, tuple[str, ...] | None] = {}
        self._load_scripts()

    def _load_scripts(self) -> None:
        """Load the scripts once, so that the first batch's EVALSHAs find them (each miss would be sent again)."""
        try:
            for script in (FOLD, GUARDED_WRITE):
                self.client.script_load(script)
        except redis.RedisError:  # not reachable yet: the first batch loads them through its NOSCRIPT fallback
            pass

    # ---------------------------------------------------------------------------------------------- ingest
    def apply(self, transactions: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]]) -> BatchResult:
        """Fold a batch of validated events into every touched entity's state and write its online rows."""
        result = BatchResult(transactions=len(transactions), labels=len(labels))
        pending: dict[tuple[str, str], _Pending] = {}
        pipe = KeyedPipeline(self.client)
        for event in transactions:
            tid = event[self.transaction_key]
            ts_ms = int(event["ts_ms"])
            record = {**event, "event_time_ms": ts_ms}
            label_keys: dict[str, str] = {}
            for name, plan in self.plans.items():
                key = record.get(plan.entity.join_key)
                if key is None:
                    continue
                pending.setdefault((name, key), _Pending()).events.extend(plan.event_args(tid, ts_ms, record))
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
            self._attach_pending([e[self.transaction_key] for e in transactions], pending)
            for label in labels:
                self._store_label(label, pending)
        result.touched = set(pending)
        self._fold(pending, result)
        return result

    def _store_label(self, label: dict[str, Any], pending: dict[tuple[str, str], _Pending]) -> None:
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
        self._file_labels(json.loads(keys), [member.encode()], pending)

    def _legacy_keys(self, tid: str) -> str | None:
        """A transaction stored before `TXN_KEYS` existed: its merchant, from the old map (`LEGACY_TXN_MERCHANT`)."""
        if not any(e.name == "merchant" for e in self.label_entities):
            return None
        merchant = self.client.hget(LEGACY_TXN_MERCHANT, tid)
        return None if merchant is None else json.dumps({"merchant": merchant.decode()})

    def _attach_pending(self, transaction_ids: Sequence[str], pending: dict[tuple[str, str], _Pending]) -> None:
        reads = KeyedPipeline(self.client)
        for tid in transaction_ids:
            reads.add("SMEMBERS", pending_labels_key(tid))
        for tid, members in zip(transaction_ids, reads.execute(), strict=True):
            if not members:
                continue
            keys = self.client.hget(TXN_KEYS, tid)
            assert keys is not None
            self._file_labels(json.loads(keys), list(members), pending)
            self.client.delete(pending_labels_key(tid))

    def _file_labels(
        self, keys: dict[str, str], members: Sequence[bytes], pending: dict[tuple[str, str], _Pending]
    ) -> None:
        """Route labels (`tid|ts|fraud`) to each entity (with a fraud_rate feature) of their transaction."""
        parsed = [_label(member) for member in members]
        for entity in self.label_entities:
            key = keys.get(entity.name)
            if key is not None:
                pending.setdefault((entity.name, key), _Pending()).labels.extend(parsed)

    # ----------------------------------------------------------------------------------------------- compute
    def _fold(self, pending: dict[tuple[str, str], _Pending], result: BatchResult) -> None:
        """One script call per touched entity (one round trip), then its rows (a second one)."""
        if not pending:
            return
        order = sorted(pending)
        calls = KeyedPipeline(self.client)
        for name, key in order:
            self._call(calls, self.plans[name], key, pending[name, key])
        replies = calls.execute()
        for index, ((name, key), reply) in enumerate(zip(order, replies, strict=True)):
            if isinstance(reply, list) and reply[0] in (b"legacy", b"respec"):
                self._rebuild(self.plans[name], key, reply[0] == b"legacy")
                again = KeyedPipeline(self.client)
                self._call(again, self.plans[name], key, pending[name, key])
                replies[index] = again.execute()[0]
        writes = KeyedPipeline(self.client)
        guarded: list[int] = []
        for (name, key), reply in zip(order, replies, strict=True):
            if not isinstance(reply, bytes):  # {"none"}: labels only, no event yet
                continue
            plan = self.plans[name]
            version, latest, decoded = decode(plan, reply)
            values = iter(zip(plan.features, decoded, strict=True))
            row = entity_key(self.project, plan.entity.join_key, key)
            for view in self.views[name]:
                mapping: dict[bytes | str, bytes] = {}
                for feature in view.features:
                    _, value = next(values)
                    mapping[feature_field(view.view, feature.name)] = encode_value(value, feature.dtype)
                mapping[ts_field(view.view)] = encode_ts(latest)
                guarded.append(writes.script(GUARDED_WRITE, row, version_field(view.view), version, *_flat(mapping)))
            result.recomputed += 1
        written = writes.execute()
        result.superseded += sum(1 for index in guarded if written[index] == 0)

    @staticmethod
    def _call(
        pipe: KeyedPipeline, plan: EntityPlan, key: str, work: _Pending, mode: str = "", prev: int | None = None
    ) -> int:
        labels = json.dumps(work.labels, separators=(",", ":")) if work.labels else "[]"
        args = [plan.spec, plan.spec_id, mode, "" if prev is None else prev, labels, *work.events]
        return pipe.script_keys(FOLD, plan.keys(key), *args)

    def _rebuild(self, plan: EntityPlan, key: str, legacy: bool) -> None:
        """Fold an entity's stored history into fresh state: the previous updater's (`legacy`), or this one's
        under another declaration of the entity's views (the catalog changed). Once per entity, in time order."""
        keys = plan.keys(key)
        state, window, old_events, old_labels = keys[0], keys[1], keys[4], keys[5]
        events: list[Event] = []
        members: list[bytes] = []
        prev: int | None = None
        if legacy:
            raw = self.client.hgetall(old_events)
            events = [self._unpack(tid.decode(), value) for tid, value in raw.items()]
            members = list(self.client.hkeys(old_labels))
            self.client.delete(old_events, old_labels)
        else:
            stored = self.client.hgetall(state)
            columns = json.loads(stored.get(b"cols", b"[]"))
            prev = state_of(stored[b"b"])["previous"] if b"b" in stored else None
            for member, score in self.client.zrange(window, 0, -1, withscores=True):
                entry = json.loads(member)
                events.append(Event(str(entry[0]), int(score), dict(zip(columns, entry[1:], strict=False))))
            self.client.delete(state, window)
        events.sort(key=lambda e: e.ts_ms)
        if members:
            seed = KeyedPipeline(self.client)
            self._call(seed, plan, key, _Pending(labels=[_label(m) for m in members]), "seed", prev)
            seed.execute()
        for start in range(0, len(events), 2000):
            chunk = _Pending()
            for event in events[start : start + 2000]:
                record = {**event.fields, "event_time_ms": event.ts_ms}
                chunk.events.extend(plan.event_args(event.transaction_id, event.ts_ms, record))
            seed = KeyedPipeline(self.client)
            self._call(seed, plan, key, chunk, "seed", prev)
            seed.execute()

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


def _label(member: bytes | str) -> list[Any]:
    """`tid|ts|fraud` as the script's label: [tid, ts, 0|1]."""
    text = member.decode() if isinstance(member, bytes) else member
    tid, ts, fraud = text.rsplit("|", 2)
    return [tid, int(ts), 1 if fraud == "1" else 0]
