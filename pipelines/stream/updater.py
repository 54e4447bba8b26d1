"""Per-event online updates, exactly once in effect, for every window view the Feast repo declares.

The catalog (`pipelines.features.catalog.load_catalog`) says what to compute: each entity with window views
(built-in or a data engineer's) keeps incremental window state in Redis under a Cluster hash tag
(`fraudserve:{card:c1}:st`, `...:win`, see `pipelines.stream.window_state`). A batch costs a few round trips: one
HSET of its transactions' label routes, and one pipelined round trip of FOLD calls that fold the new events and
labels into every touched entity's state, answer each feature at the entity's latest event time, and write Feast's
rows. On a single Redis one FOLD call takes up to FOLD_CHUNK entities and writes their rows itself, in the same
atomic call, and the transactions' own rows go in WRITE_ROWS calls of up to ROW_CHUNK rows; on a Redis Cluster a call's
keys must share a slot, so each entity is its own call and its rows (another slot) are written after it with a
one-key script that keeps only a newer state version (`_v:<view>`), so the last row standing reflects every event
folded. The cost per event does not grow with the entity's history: what leaves a window is read by time range,
what stays is never re-read. Each call runs atomically and a redelivered event is already a member of its window
set, so duplicates change nothing and two workers on one entity need no lock. Labels reach every entity of their
transaction that has a fraud_rate feature. Histories kept by the previous (recomputing) updater are folded into the
new state on the entity's first batch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import msgpack
import redis
from redis.crc import key_slot

from pipelines.features.catalog import TRANSACTION_VIEW, Catalog, WindowView, load_catalog
from pipelines.features.semantics import Event
from pipelines.online_layout import encode_value, feature_field, key_prefix, ts_field
from pipelines.stream.window_state import FOLD, EntityPlan, compact_json, decode, plan_entity, state_of, window_member

# Transaction id -> JSON {entity name: key} for the entities whose views need labels (fraud_rate): where a label goes,
# and under EVENT_TIME the transaction's event time (the script finds an unlabelled event by it: it keeps no label
# record for one; entries written before this field existed lack it, and their events have records).
TXN_KEYS = "fraudserve:txn-label-keys"
EVENT_TIME = "@ts"
# Transaction id -> merchant id, as updaters before `TXN_KEYS` wrote it: read (never written) for labels of those.
LEGACY_TXN_MERCHANT = "fraudserve:txn-merchant"
# Layout id -> JSON list of the event fields an entity's history entries hold (see `HistoryLayout`).
LAYOUTS = "fraudserve:stream:layouts"


def version_field(view: str) -> str:
    """The field of Feast's row hash that holds the history version the view's values were computed from."""
    return f"_v:{view}"


# KEYS: Feast row hashes. ARGV, per key: mode ("v" versioned, "h" plain), n, then for "v" the version field and the
# version, then n field, value pairs. A versioned row is written only from a newer computation than the one stored
# (the last row standing is the newest state). Returns how many versioned rows were not written (superseded).
WRITE_ROWS = """
local a, superseded = 1, 0
for i = 1, #KEYS do
  local mode, n = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  if mode == 'v' then
    local stored = tonumber(redis.call('HGET', KEYS[i], ARGV[a]) or '0')
    if stored >= tonumber(ARGV[a + 1]) then
      superseded = superseded + 1
    else
      redis.call('HSET', KEYS[i], ARGV[a], ARGV[a + 1], unpack(ARGV, a + 2, a + 1 + 2 * n))
    end
    a = a + 2
  else
    redis.call('HSET', KEYS[i], unpack(ARGV, a, a - 1 + 2 * n))
  end
  a = a + 2 * n
end
return superseded
"""
# On a single Redis a batch's entities are folded, and its rows written, by a few script calls of at most this
# many entities (rows), pipelined in one round trip: the per-call cost is paid once per chunk, and one call holds
# Redis (which answers the API meanwhile) for about a millisecond, not for the whole batch.
FOLD_CHUNK = 48
ROW_CHUNK = 256


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


def _varint(value: int) -> bytes:
    """Protobuf's varint of an int64 (a negative one as its 64-bit two's complement, as protobuf writes it)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.lru_cache(maxsize=1 << 16)
def _encoded_text(value: Any, kind: str) -> bytes:
    text = str(value).encode()
    return b"\x12" + _varint(len(text)) + text


def _encoded(value: Any, dtype: str) -> bytes:
    """Feast's ValueProto bytes of a value (`online_layout.encode_value`'s, byte for byte: a test holds them equal),
    built here: a protobuf message per value cost a fifth of a worker's CPU (a transaction's row has nine). Texts
    are remembered (ids, currencies and countries repeat); an int64 outside its range goes to protobuf (which
    refuses it)."""
    if value is None:
        return b""
    if dtype == "int64":
        number = int(value)
        if -(1 << 63) <= number < (1 << 63):
            return b"\x20" + _varint(number)
        return encode_value(value, dtype)
    if dtype == "float64":
        return b"\x29" + struct.pack("<d", float(value))
    return _encoded_text(value, type(value).__name__)


def _encoded_ts(epoch_ms: int) -> bytes:
    """`online_layout.encode_ts`'s bytes (a Timestamp: seconds, nanos; zeros left out), without protobuf."""
    seconds, nanos = epoch_ms // 1000, (epoch_ms % 1000) * 1_000_000
    return (b"\x08" + _varint(seconds) if seconds else b"") + (b"\x10" + _varint(nanos) if nanos else b"")


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


@dataclass
class PreparedBatch:
    """A batch ready for `OnlineUpdater.write`: per touched entity its work, and the transactions' own rows."""

    pending: dict[tuple[str, str], _Pending]
    rows: list[list[Any]]
    result: BatchResult


class OnlineUpdater:
    """Keeps every window view of the catalog (`load_catalog()` unless given) up to date from the events."""

    def __init__(
        self,
        client: redis.Redis,
        project: str,
        lateness: timedelta = timedelta(minutes=5),
        catalog: Catalog | None = None,
        rows_in_script: bool | None = None,
    ) -> None:
        """`rows_in_script`: the fold script writes Feast's rows (default: on a single Redis; on a cluster they are
        in another slot, so they are written here, with their version)."""
        # redis-py's sync methods are typed as `Awaitable[T] | T`; this module uses the sync client only.
        self.client: Any = client
        self.cluster = isinstance(client, redis.RedisCluster)
        self.rows_in_script = not self.cluster if rows_in_script is None else rows_in_script
        if self.cluster and self.rows_in_script:
            raise ValueError("on a Redis Cluster the fold script cannot write Feast's rows (another slot)")
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
        # Per entity, per view: (version field, timestamp field, [(feature field, dtype), ...]), resolved once.
        self._rows: dict[str, list[tuple[str, str, list[tuple[bytes, str]]]]] = {
            name: [
                (
                    version_field(view.view),
                    ts_field(view.view),
                    [(feature_field(view.view, f.name), f.dtype) for f in view.features],
                )
                for view in views
            ]
            for name, views in self.views.items()
        }
        self._transaction_fields = [
            (feature_field(TRANSACTION_VIEW, name), name, dtype)
            for name, dtype in self.catalog.transaction_fields.items()
        ]
        self._transaction_ts = ts_field(TRANSACTION_VIEW)
        # An event's window members and distinct values, built once per event for every entity that keeps the same
        # columns (most keep the amount, some nothing), then shared: per entity (name, join key, member layout,
        # distinct layout).
        self._member_columns = sorted({plan.columns for plan in self.plans.values()})
        self._distinct_columns = sorted({plan.distinct for plan in self.plans.values()})
        self._routes = [
            (name, plan.entity.join_key, self._member_columns.index(plan.columns),
             self._distinct_columns.index(plan.distinct))
            for name, plan in self.plans.items()
        ]  # fmt: skip
        self._known_layouts: dict[str, tuple[str, ...] | None] = {}
        self._load_scripts()

    def _load_scripts(self) -> None:
        """Load the scripts once, so that the first batch's EVALSHAs find them (each miss would be sent again)."""
        try:
            for script in (FOLD, WRITE_ROWS):
                self.client.script_load(script)
        except redis.RedisError:  # not reachable yet: the first batch loads them through its NOSCRIPT fallback
            pass

    def _row_key(self, join_key: str, value: str) -> bytes:
        """Feast's row key of an entity: its v3 serialized entity key (one string join key) and the project, built
        from the key's fixed prefix as the bulk materializer builds it (Feast's serializer costs about 20 us)."""
        raw = value.encode()
        return b"".join((key_prefix(join_key), struct.pack("<I", len(raw)), raw, self.project))

    # ---------------------------------------------------------------------------------------------- ingest
    def apply(self, transactions: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]]) -> BatchResult:
        """Fold a batch of validated events into every touched entity's state and write its online rows."""
        return self.write(self.prepare(transactions, labels))

    def prepare(self, transactions: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]]) -> PreparedBatch:
        """A batch's first half: its label routes written, its labels routed, each entity's script arguments built
        (the worker's own CPU); `write` does the rest (the script calls: Redis's)."""
        result = BatchResult(transactions=len(transactions), labels=len(labels))
        pending: dict[tuple[str, str], _Pending] = {}
        rows: list[list[Any]] = []  # [row key, "h", n, field, value, ...] for WRITE_ROWS
        label_keys_of: list[bytes | str] = []
        label_names = [e.name for e in self.label_entities]
        for event in transactions:
            tid = event[self.transaction_key]
            ts_ms = int(event["ts_ms"])
            record = {**event, "event_time_ms": ts_ms}
            # the script's arguments for this event (as `EntityPlan.event_args` makes them), once per layout
            members = [window_member(tid, columns, record) for columns in self._member_columns]
            distinct = [[record.get(c) for c in columns] for columns in self._distinct_columns]
            for name, join_key, member, counted in self._routes:
                key = record.get(join_key)
                if key is None:
                    continue
                work = pending.get((name, key))
                if work is None:
                    work = pending[name, key] = _Pending()
                text, values = members[member]
                work.events.extend((ts_ms, text, values, distinct[counted]))
            if label_names:
                keys = {n: record.get(self.entities[n].join_key) for n in label_names}
                found: dict[str, Any] = {n: k for n, k in keys.items() if k is not None}
                found[EVENT_TIME] = ts_ms
                label_keys_of += [tid, compact_json(found)]
            row: list[Any] = [self._row_key(self.transaction_key, tid), "h", len(self._transaction_fields) + 1]
            for field_name, name, dtype in self._transaction_fields:
                row += [field_name, _encoded(record.get(name), dtype)]
            row += [self._transaction_ts, _encoded_ts(ts_ms)]
            rows.append(row)
        if label_keys_of:
            self.client.execute_command("HSET", TXN_KEYS, *label_keys_of)
        if self.label_entities:
            self._attach_pending([e[self.transaction_key] for e in transactions], pending)
            for label in labels:
                self._store_label(label, pending)
        result.touched = set(pending)
        return PreparedBatch(pending, rows, result)

    def write(self, batch: PreparedBatch) -> BatchResult:
        """A prepared batch folded into every touched entity's state and its online rows written. Batches must be
        written in the order they were prepared (one entity's events keep their order)."""
        self._fold(batch.pending, batch.rows, batch.result)
        return batch.result

    def fold_only(self, entity: str, key: str, transactions: Sequence[dict[str, Any]]) -> None:
        """Fold events into one entity's state (and its rows) alone: no other entity, no transaction rows, no label
        routes. For tools that build a large entity's state fast (`bench.window_state`); the stream uses `apply`."""
        plan = self.plans[entity]
        work = _Pending()
        for event in transactions:
            ts_ms = int(event["ts_ms"])
            work.events.extend(plan.event_args(event[self.transaction_key], ts_ms, {**event, "event_time_ms": ts_ms}))
        self._fold_calls([(plan, key, work, "", None)])

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
        """Labels that arrived before their transaction, filed to its entities (usually none: on a single Redis one
        EXISTS over the batch's keys says so)."""
        if not transaction_ids:
            return
        if not self.cluster and not self.client.exists(*[pending_labels_key(tid) for tid in transaction_ids]):
            return
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
        self, keys: dict[str, Any], members: Sequence[bytes], pending: dict[tuple[str, str], _Pending]
    ) -> None:
        """Route labels (`tid|ts|fraud`) to each entity (with a fraud_rate feature) of their transaction, with the
        transaction's event time when `keys` has it."""
        parsed = [_label(member) for member in members]
        event_time = keys.get(EVENT_TIME)
        if event_time is not None:
            parsed = [[*label, event_time] for label in parsed]
        for entity in self.label_entities:
            key = keys.get(entity.name)
            if key is not None:
                pending.setdefault((entity.name, key), _Pending()).labels.extend(parsed)

    # ----------------------------------------------------------------------------------------------- compute
    def _fold(self, pending: dict[tuple[str, str], _Pending], rows: list[list[Any]], result: BatchResult) -> None:
        """Fold every touched entity (one round trip of FOLD calls), then write its rows and the batch's transaction
        rows (a second one)."""
        order = sorted(pending)
        answers = self._fold_calls([(self.plans[name], key, pending[name, key], "", None) for name, key in order])
        for index, ((name, key), answer) in enumerate(zip(order, answers, strict=True)):
            if isinstance(answer[0], str) and answer[0] in ("legacy", "respec"):
                self._rebuild(self.plans[name], key, answer[0] == "legacy")
                answers[index] = self._fold_calls([(self.plans[name], key, pending[name, key], "", None)])[0]
        for (name, key), answer in zip(order, answers, strict=True):
            if isinstance(answer[0], str):  # ["none"]: labels only, no event yet
                continue
            result.recomputed += 1
            if len(answer) == 2:  # the script wrote the entity's rows
                continue
            version, latest, decoded = decode(self.plans[name], answer)
            row_key = self._row_key(self.plans[name].entity.join_key, key)
            stamp = _encoded_ts(latest)
            position = 0
            for version_name, ts_name, features in self._rows[name]:
                row: list[Any] = [row_key, "v", len(features) + 1, version_name, version]
                for field_name, dtype in features:
                    row += [field_name, _encoded(decoded[position], dtype)]
                    position += 1
                row += [ts_name, stamp]
                rows.append(row)
        result.superseded += self._write(rows)

    def _fold_calls(self, items: Sequence[tuple[EntityPlan, str, _Pending, str, int | None]]) -> list[list[Any]]:
        """FOLD over entities (plan, key, work, mode, previous-time hint): a few calls of up to FOLD_CHUNK entities
        on a single Redis, one call per entity on a cluster (a call's keys must share a slot), one round trip.

        On a single Redis the script also writes each entity's Feast rows (its row key follows its keys), in the
        same atomic call; on a cluster the row is in another slot, so `_fold` writes it with its version."""
        pipe = KeyedPipeline(self.client)
        chunk = 1 if self.cluster else FOLD_CHUNK
        for start in range(0, len(items), chunk):
            specs: dict[str, int] = {}
            spec_list: list[list[Any]] = []
            keys: list[str | bytes] = []
            work: list[list[Any]] = []
            for plan, key, pending, mode, prev in items[start : start + chunk]:
                index = specs.get(plan.spec_id)
                if index is None:
                    index = specs[plan.spec_id] = len(spec_list) + 1
                    spec_list.append([plan.spec, plan.spec_id])
                entity_keys = plan.keys(key)
                labels = compact_json(pending.labels) if pending.labels else "[]"
                row = self.rows_in_script and mode == ""
                work.append([index, len(keys) + 1, len(entity_keys), mode, "" if prev is None else str(prev), labels,
                             pending.events, int(row)])  # fmt: skip
                keys += entity_keys
                if row:
                    keys.append(self._row_key(plan.entity.join_key, key))
            pipe.script_keys(FOLD, keys, msgpack.packb(spec_list, use_bin_type=False), msgpack.packb(work))
        answers: list[list[Any]] = []
        for reply in pipe.execute():
            answers += msgpack.unpackb(reply)
        return answers

    def _write(self, rows: Sequence[list[Any]]) -> int:
        """WRITE_ROWS over rows ([key, mode, n, ...]): calls of up to ROW_CHUNK rows on a single Redis, one row per
        call on a cluster; one round trip. Returns how many versioned rows were superseded."""
        pipe = KeyedPipeline(self.client)
        chunk = 1 if self.cluster else ROW_CHUNK
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            pipe.script_keys(WRITE_ROWS, [row[0] for row in part], *[item for row in part for item in row[1:]])
        return sum(int(reply) for reply in pipe.execute())

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
            self._fold_calls([(plan, key, _Pending(labels=[_label(m) for m in members]), "seed", prev)])
        for start in range(0, len(events), 2000):
            chunk = _Pending()
            for event in events[start : start + 2000]:
                record = {**event.fields, "event_time_ms": event.ts_ms}
                chunk.events.extend(plan.event_args(event.transaction_id, event.ts_ms, record))
            self._fold_calls([(plan, key, chunk, "seed", prev)])

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
