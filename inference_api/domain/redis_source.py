"""Feast's Redis online layout read directly: one pipelined round trip per lookup, nothing resolved per request.

The keys and hash fields are built with Feast's own helpers (`serialize_entity_key`, `_mmh3`), so this reads
exactly what Feast's materialize (and the stream worker's pushes) wrote: the hash of an entity key holds one field
per feature (`mmh3("view:feature")` → a serialized ValueProto) and `_ts:view` (a Timestamp). Field names are
hashed once per feature plan, not per request. The integration tests compare its vectors with Feast's SDK.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException

from core.connections import async_redis_client
from inference_api.domain.features import (
    STORE_ERRORS,
    FeatureColumns,
    TransactionRecord,
    ViewValues,
    store_unavailable,
    within_budget,
)
from inference_api.domain.lookup_connection import LookupConnections
from inference_api.domain.plan import FeaturePlan, ViewRead, transaction_layout
from pipelines.features.catalog import TRANSACTION_VIEW
from pipelines.online_layout import decode_ts, decode_value, entity_key, feature_field, key_prefix, ts_field

if TYPE_CHECKING:
    from feast import FeatureStore


# A batch's read may wait this long in all, beyond the budget, for an event loop busy with other batches (up to
# FRAUDSERVE_BATCH_MAX_ITEMS_IN_FLIGHT items); the store's own time still answers within the budget.
BATCH_LOOP_LAG_S = 2.0
T = TypeVar("T")
BATCH_CHUNK = 256  # ids per script call of a batch read; the read's budget is the request budget per chunk


def _fields(view: str, features: tuple[str, ...]) -> tuple[bytes | str, ...]:
    return (*(feature_field(view, f) for f in features), ts_field(view))


# A stored ValueProto's string_val (field 2: 0x12, varint length, bytes), or nil: a join key's value.
_STRING_VAL = """
local function string_val(raw)
  if not raw or #raw < 2 or string.byte(raw, 1) ~= 18 then return nil end
  local length, shift, i = 0, 1, 2
  while i <= #raw do
    local b = string.byte(raw, i)
    length = length + (b % 128) * shift
    i = i + 1
    if b < 128 then break end
    shift = shift * 128
  end
  if length == 0 then return nil end
  return string.sub(raw, i, i + length - 1)
end
"""

# One round trip for a transaction and its views' features: HMGET the transaction's hash, take each join key's value
# from its stored ValueProto (field 2, string_val: 0x12, varint length, bytes), build Feast's v3 entity key and HMGET
# the fields of every view keyed by it (several views may share a join key, e.g. a window view and a batch view of
# merchant_id: Feast keeps them in one hash, read by one HMGET). The plan (project, field names, key prefixes) is
# written into the script as literals (`_lookup_script`), one script per feature plan, so a call carries only the
# transaction keys. Keys are derived inside the script, so it runs on a single Redis only; on a cluster the reader
# makes two round trips.
_LOOKUP_BODY = (
    _STRING_VAL
    + """
local out = {}
for k = 1, #KEYS do
  local txn = redis.call('HMGET', KEYS[k], unpack(tfields))
  local row = {txn}
  for v = 1, #views do
    local view = views[v]
    local id = string_val(txn[view.index])
    if id then
      row[v + 1] = redis.call('HMGET', view.prefix .. struct.pack('<I4', #id) .. id .. project, unpack(view.fields))
    else
      row[v + 1] = false
    end
  end
  out[k] = row
end
return out
"""
)

# The same lookup for a whole batch, flat: every transaction's fields, then each key group's fields (the group's
# width of empty strings when the transaction has no value of its key), one array of n x width strings (a missing
# field is "" too). An entity that several transactions of the batch share (a merchant, a card) is read once.
# Nothing per id crosses to Python but a bytes object per cell; `decode_columns` turns the cells into numpy columns
# without a protobuf message per value.
_FLAT_BODY = (
    _STRING_VAL
    + """
local out, n, seen = {}, 0, {}
local width = #tfields
for k = 1, #KEYS do
  local txn = redis.call('HMGET', KEYS[k], unpack(tfields))
  for f = 1, width do
    n = n + 1
    out[n] = txn[f] or ''
  end
  for v = 1, #views do
    local view = views[v]
    local id = string_val(txn[view.index])
    local count = #view.fields
    if id then
      local key = view.prefix .. struct.pack('<I4', #id) .. id .. project
      local got = seen[key]
      if not got then
        got = redis.call('HMGET', key, unpack(view.fields))
        seen[key] = got
      end
      for f = 1, count do
        n = n + 1
        out[n] = got[f] or ''
      end
    else
      for f = 1, count do
        n = n + 1
        out[n] = ''
      end
    end
  end
end
return out
"""
)


def _lua(value: bytes | str) -> str:
    """A Lua string literal of any bytes (decimal escapes)."""
    raw = value.encode() if isinstance(value, str) else value
    return '"' + "".join(f"\\{c:03d}" for c in raw) + '"'


def key_groups(views: tuple[ViewRead, ...]) -> list[tuple[str, tuple[ViewRead, ...]]]:
    """The plan's views grouped by join key, in first-seen order: one HMGET per key reads every view of it."""
    groups: dict[str, list[ViewRead]] = {}
    for view in views:
        groups.setdefault(view.join_key, []).append(view)
    return [(key, tuple(group)) for key, group in groups.items()]


def _group_fields(group: tuple[ViewRead, ...]) -> tuple[bytes | str, ...]:
    return tuple(f for view in group for f in _fields(view.view, view.features))


def _lookup_script(
    project: bytes, fields: tuple[str, ...], views: tuple[ViewRead, ...], body: str = _LOOKUP_BODY
) -> str:
    """The one-round-trip lookup for a plan's views, its constants as literals (`body`: nested or flat replies)."""
    tfields = ", ".join(_lua(f) for f in _fields(TRANSACTION_VIEW, fields))
    entries = []
    for join_key, group in key_groups(views):
        index = fields.index(join_key) + 1
        hashed = ", ".join(_lua(f) for f in _group_fields(group))
        entries.append(f"{{index = {index}, prefix = {_lua(key_prefix(join_key))}, fields = {{{hashed}}}}}")
    header = f"local project = {_lua(project)}\nlocal tfields = {{{tfields}}}\nlocal views = {{{', '.join(entries)}}}\n"
    return header + body


def _split(group: tuple[ViewRead, ...], reply: list[bytes | None] | None) -> dict[str, ViewValues]:
    """Each view's values from one key's HMGET reply (None: the transaction has no value of the key)."""
    out: dict[str, ViewValues] = {}
    start = 0
    for view in group:
        width = len(view.features) + 1
        out[view.view] = _view_values(view, None if reply is None else reply[start : start + width])
        start += width
    return out


class KeptConnections:
    """Connections a lookup keeps for itself (redis-py's own `Connection`s, made by `connect`), taken one per call.

    As the client's `Retry(NoBackoff(), 1)`: one immediate retry after a connection error (a kept connection that a
    Redis restart closed). The retry goes over the same connection, connected anew: the other kept connections were
    opened to the same server and a restart closed them too, so they are dropped rather than tried in turn (two of
    them failing would answer features_unavailable from a store that is up). After an error of a type in
    `reusable` (an error reply read whole) the connection is kept; after any other (a cancelled or failed read that
    may leave replies unread) it is disconnected, never reused."""

    def __init__(self, connect: Callable[[], AbstractConnection]) -> None:
        self._connect = connect
        self._idle: list[AbstractConnection] = []  # not in use

    async def run(
        self, call: Callable[[AbstractConnection], Awaitable[T]], reusable: tuple[type[BaseException], ...] = ()
    ) -> T:
        connection = self._idle.pop() if self._idle else self._connect()
        for attempt in (0, 1):
            try:
                result = await call(connection)
            except (redis.ConnectionError, redis.TimeoutError):
                await connection.disconnect(nowait=True)
                stale, self._idle = self._idle, []
                for other in stale:
                    await other.disconnect(nowait=True)
                if attempt:
                    raise
                continue
            except reusable:
                self._idle.append(connection)
                raise
            except BaseException:
                await connection.disconnect(nowait=True)
                raise
            self._idle.append(connection)
            return result
        raise AssertionError("unreachable")

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


class RedisFeatureSource:
    """`FeatureSource` over Feast's Redis layout, with redis-py's asyncio client (hiredis parser)."""

    def __init__(self, store: FeatureStore, budget_s: float) -> None:
        from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType

        config = store.config.online_store
        if not isinstance(config, RedisOnlineStoreConfig):
            raise TypeError("RedisFeatureSource needs Feast's Redis online store")
        # One immediate retry (a pooled connection that a Redis restart closed reconnects; on a cluster, one refresh
        # of the slot map after a connection error or a MOVED), no backoff: redis-py's defaults (3 retries with
        # exponential backoff; up to 10 s between tries on a cluster) spend seconds on a refused connection, so
        # every request during an outage would wait out the whole budget instead of answering features_unavailable.
        self.client: aioredis.Redis | aioredis.RedisCluster = async_redis_client(
            config.connection_string,
            config.redis_type == RedisType.redis_cluster,
            socket_timeout=budget_s,
            socket_connect_timeout=budget_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._connection = config.connection_string
        self._batch: aioredis.Redis | None = None  # the batch path's client (`_batch_client`)
        self.project = store.config.project.encode()
        self.version = store.config.entity_key_serialization_version
        self.budget_s = budget_s
        # The one-round-trip read needs a single Redis and Feast's v3 keys; otherwise two pipelined round trips.
        self.fused = isinstance(self.client, aioredis.Redis) and self.version == 3
        self._scripts: dict[int, tuple[AsyncScript, tuple[ViewRead, ...], list[tuple[str, tuple[ViewRead, ...]]]]] = {}
        self._kept = KeptConnections(self._connection_of_lookup)  # the single lookup's own (`_evalsha`)
        # The single lookup's own protocol connections; None where the connection string needs redis-py's (TLS).
        self._lookup: LookupConnections | None = None
        if self.fused and isinstance(self.client, aioredis.Redis):
            pool = self.client.connection_pool
            self._lookup = LookupConnections.of(pool.connection_class, pool.connection_kwargs, budget_s)
        self._flat: dict[int, tuple[AsyncScript, tuple[ViewRead, ...], FlatLayout]] = {}
        self.join_key, self.fields = transaction_layout(store)
        self._transaction_fields = _fields(TRANSACTION_VIEW, self.fields)

    def _key(self, join_key: str, value: str) -> bytes:
        if self.version == 3:  # Feast's v3 bytes, built from a cached prefix (tested equal to Feast's helper)
            raw = value.encode()
            return key_prefix(join_key) + struct.pack("<I", len(raw)) + raw + self.project
        return entity_key(self.project, join_key, value, self.version)

    async def _hmget_all(self, commands: list[tuple[bytes, tuple[bytes | str, ...]]]) -> list[list[bytes | None]]:
        pipe = self.client.pipeline(transaction=False)
        for key, fields in commands:
            pipe.hmget(key, list(fields))  # type: ignore[arg-type]  # bytes keys are fine
        replies: list[list[bytes | None]] = await within_budget(pipe.execute(), self.budget_s)
        return replies

    async def transactions(self, ids: Sequence[str], plan: FeaturePlan | None = None) -> list[TransactionRecord | None]:
        keys = [self._key(self.join_key, i) for i in ids]
        if plan is not None and plan.views and self.fused:
            return await self._transactions_with_views(ids, keys, plan)
        replies = await self._hmget_all([(key, self._transaction_fields) for key in keys])
        return [_record(self.fields, i, reply) for i, reply in zip(ids, replies, strict=True)]

    def _script_for(self, plan: FeaturePlan) -> tuple[AsyncScript, list[tuple[str, tuple[ViewRead, ...]]]]:
        """The lookup script of a plan and the plan's key groups, made once per plan (reloaded if Redis lost it)."""
        cached = self._scripts.get(id(plan))
        if cached is None or cached[1] is not plan.views:
            assert isinstance(self.client, aioredis.Redis)
            script = _lookup_script(self.project, self.fields, plan.views)
            cached = (self.client.register_script(script), plan.views, key_groups(plan.views))
            self._scripts[id(plan)] = cached
        return cached[0], cached[2]

    async def _evalsha(self, script: AsyncScript, keys: list[bytes]) -> Any:
        """`script(keys=keys)` on a redis-py connection of the lookup's own, without redis-py's per-command machinery:
        the single lookup where `LookupConnections` cannot connect as the connection string asks (TLS and the like).

        The single score's one round trip: redis-py's `Redis.execute_command` costs about 45 us of CPU per call on
        top of the socket calls (a pool lock, its retry wrapper, observability hooks, and a task per send for the
        socket timeout), as much as the Lua script on the server (bench/README.md). The connections are redis-py's
        own (connect, hiredis parsing, errors), kept by `KeptConnections` (its retry after a connection error) and
        made without a socket timeout: `within_budget` bounds the call. A script that Redis lost (a restart,
        `SCRIPT FLUSH`) is loaded again; an error reply (the script failed) is read whole, so the connection stays."""

        packed = evalsha_command(script.sha, keys)

        async def call(connection: AbstractConnection) -> Any:
            try:
                return await _send(connection, packed)
            except NoScriptError:
                await _call(connection, "SCRIPT", "LOAD", script.script)
                return await _call(connection, "EVALSHA", script.sha, len(keys), *keys)

        return await self._kept.run(call, reusable=(redis.ResponseError,))

    def _connection_of_lookup(self) -> AbstractConnection:
        assert isinstance(self.client, aioredis.Redis), "the one-round-trip lookup needs a single Redis (see fused)"
        pool = self.client.connection_pool
        return pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})

    async def _transactions_with_views(
        self, ids: Sequence[str], keys: list[bytes], plan: FeaturePlan
    ) -> list[TransactionRecord | None]:
        script, groups = self._script_for(plan)
        replies: list[list[Any]]
        if self._lookup is None:
            replies = await within_budget(self._evalsha(script, keys), self.budget_s)
        else:
            try:
                replies = await self._lookup.evalsha(evalsha_command(script.sha, keys), script.script)
            except STORE_ERRORS as exc:
                raise store_unavailable(exc, self.budget_s) from exc
        return _nested_records(self.fields, groups, plan, ids, replies)

    @property
    def columnar(self) -> bool:
        """Whether `columns` can read a batch (one script call: a single Redis and Feast's v3 keys)."""
        return self.fused

    async def columns(self, ids: Sequence[str], plan: FeaturePlan, numeric: Sequence[str] = ()) -> FeatureColumns:
        """The transactions of `ids` and their plan's entity features, column-wise, in one round trip.

        `numeric`: the transaction fields wanted as numbers (the plan's own transaction features, the request-time
        inputs). What one batch costs in Python is a bytes object per cell and a few numpy passes over all of them,
        not a protobuf message per value (`decode_columns`)."""
        cached = self._flat.get(id(plan))
        if cached is None or cached[1] is not plan.views:
            body = _lookup_script(self.project, self.fields, plan.views, _FLAT_BODY)
            cached = (self._batch_client().register_script(body), plan.views, FlatLayout.of(self.fields, plan))
            self._flat[id(plan)] = cached
        script, _, layout = cached
        keys = [self._key(self.join_key, i) for i in ids]
        if len(keys) <= BATCH_CHUNK:
            cells: list[bytes] = await within_budget(script(keys=keys), self.budget_s, BATCH_LOOP_LAG_S) if keys else []
            return decode_columns(layout, ids, cells, numeric)
        # Larger batches: one pipelined round trip of script calls of BATCH_CHUNK ids each, so that Redis serves other
        # clients between them (a script blocks the server while it runs), with the budget of each chunk.
        pipe = self._batch_client().pipeline(transaction=False)
        for start in range(0, len(keys), BATCH_CHUNK):
            await script(keys=keys[start : start + BATCH_CHUNK], client=pipe)  # queued, sent by execute
        chunks = -(-len(keys) // BATCH_CHUNK)
        replies: list[list[bytes]] = await within_budget(pipe.execute(), self.budget_s * chunks, BATCH_LOOP_LAG_S)
        return decode_columns(layout, ids, list(itertools.chain.from_iterable(replies)), numeric)

    def _batch_client(self) -> aioredis.Redis:
        """A client of its own for batches: its socket timeout leaves room for `BATCH_LOOP_LAG_S`, so that only
        `within_budget` decides (redis-py's read timeout also runs on the loop's clock)."""
        assert isinstance(self.client, aioredis.Redis), "columns() needs a single Redis (see columnar)"
        if self._batch is None:
            timeout = self.budget_s + BATCH_LOOP_LAG_S
            client = async_redis_client(
                self._connection, False, socket_timeout=timeout, socket_connect_timeout=self.budget_s,
                retry=Retry(NoBackoff(), 1),
            )  # fmt: skip
            assert isinstance(client, aioredis.Redis)
            self._batch = client
        return self._batch

    async def views(self, plan: FeaturePlan, records: Sequence[TransactionRecord]) -> list[dict[str, ViewValues]]:
        groups = key_groups(plan.views)
        commands = []
        for record in records:
            for join_key, group in groups:
                key = record.key(join_key)
                if key is not None:
                    commands.append((self._key(join_key, key), _group_fields(group)))
        replies = iter(await self._hmget_all(commands)) if commands else iter(())
        result: list[dict[str, ViewValues]] = []
        for record in records:
            by_view: dict[str, ViewValues] = {}
            for join_key, group in groups:
                by_view.update(_split(group, None if record.key(join_key) is None else next(replies)))
            result.append(by_view)
        return result

    async def ping(self) -> bool:
        """Whether the online store answers. On a cluster every master must: a plain PING goes to one random node,
        which says nothing of the slots a dead master held."""
        try:
            if isinstance(self.client, aioredis.RedisCluster):
                pong: Any = self.client.ping(target_nodes=aioredis.RedisCluster.PRIMARIES)
            else:
                pong = self.client.ping()
            return bool(await asyncio.wait_for(pong, timeout=self.budget_s))
        except (redis.RedisError, RedisClusterException, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._lookup is not None:
            self._lookup.close()
        await self._kept.close()
        await self.client.aclose()
        if self._batch is not None:
            await self._batch.aclose()


async def _call(connection: AbstractConnection, *args: Any) -> Any:
    """One command on one connection: sent and its reply read (a ResponseError reply raised, as redis-py does)."""
    return await _send(connection, connection.pack_command(*args))


async def _send(connection: AbstractConnection, packed: bytes | list[bytes]) -> Any:
    await connection.send_packed_command(packed, check_health=False)
    return await connection.read_response()


def evalsha_command(sha: str, keys: list[bytes]) -> bytes:
    """`EVALSHA sha len(keys) *keys` in RESP, the bytes redis-py's `pack_command` makes for it (tested equal),
    without its per-argument encoder calls and joins: the lookup sends one per call."""
    count = str(len(keys)).encode()
    parts = [b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (3 + len(keys), len(sha), sha.encode(),
                                                                       len(count), count)]  # fmt: skip
    parts += [b"$%d\r\n%b\r\n" % (len(key), key) for key in keys]
    return b"".join(parts)


def _pad(replies: list[Any], count: int) -> list[Any]:
    """Lua drops trailing nils (`false` here) of a table: the missing ones are keys the transaction has no value of."""
    return [*replies, *([False] * (count - len(replies)))]


def _row(fields: tuple[str, ...], reply: list[bytes | None]) -> dict[str, Any] | None:
    """A stored transaction's fields from its HMGET reply (its `_ts` last), None when it is not stored."""
    row = dict(zip(fields, _values_of(reply[:-1]), strict=True))
    return None if row.get("card_id") is None else row  # every stored transaction has a card


def _nested_records(
    fields: tuple[str, ...],
    groups: list[tuple[str, tuple[ViewRead, ...]]],
    plan: FeaturePlan,
    ids: Sequence[str],
    replies: list[list[Any]],
) -> list[TransactionRecord | None]:
    """The records of the one-round-trip script's nested reply (`_LOOKUP_BODY`): per id, the transaction's HMGET,
    then one HMGET per key group (None: the transaction has no value of that key)."""
    records: list[TransactionRecord | None] = []
    count = len(groups)
    for transaction_id, (reply, *by_key) in zip(ids, replies, strict=True):
        row = _row(fields, reply)
        if row is None:
            records.append(None)
            continue
        by_view: dict[str, ViewValues] = {}
        for (_, group), raw in zip(groups, _pad(by_key, count) if len(by_key) < count else by_key, strict=True):
            if raw and len(group) == 1:  # the usual case: one view per key, its reply whole (no slice)
                by_view[group[0].view] = _view_values(group[0], raw)
            else:
                by_view.update(_split(group, raw or None))
        records.append(TransactionRecord(transaction_id, row, _stamp_of(reply[-1]), by_view, plan))
    return records


def _record(fields: tuple[str, ...], transaction_id: str, reply: list[bytes | None]) -> TransactionRecord | None:
    row = _row(fields, reply)
    return None if row is None else TransactionRecord(transaction_id, row, stored_at=_stamp_of(reply[-1]))


def _view_values(view: ViewRead, reply: list[bytes | None] | None) -> ViewValues:
    """One view's values and timestamp from its HMGET reply (None: the entity has no id on this transaction)."""
    if reply is None:
        return ViewValues(dict.fromkeys(view.features), None)
    values = dict(zip(view.features, _values_of(reply[:-1]), strict=True))
    return ViewValues(values, _stamp_of(reply[-1]))


# A single score decodes a few dozen values: the common kinds are read here with struct (a double) or a short
# varint loop, the rest by Feast's protobuf message (`decode_value`, `decode_ts`); tests/unit/test_batching.py holds
# both equal to them on every kind.
_unpack_double = struct.Struct("<d").unpack_from


def _varint(raw: bytes, at: int) -> tuple[int, int]:
    """A protobuf varint at `raw[at]`: its value (unsigned) and the offset after it."""
    value = shift = 0
    while True:
        byte = raw[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def _value(raw: bytes | None) -> Any:
    """`decode_value` of a stored ValueProto: a double, int64 or string read directly, any other kind by Feast's."""
    if not raw:
        return None
    tag = raw[0]
    try:
        if tag == 0x29 and len(raw) == 9:  # double_val
            return _unpack_double(raw, 1)[0]
        if tag == 0x20:  # int64_val (two's complement in ten bytes when negative)
            value, end = _varint(raw, 1)
            if end == len(raw) and value < 1 << 64:
                return value - (1 << 64) if value >= 1 << 63 else value
        elif tag == 0x12:  # string_val
            length, start = _varint(raw, 1)
            if start + length == len(raw):
                return raw[start:].decode()
    except (IndexError, UnicodeDecodeError):
        pass
    return decode_value(raw)


# The same stored bytes recur: counts and flags are a few small integers, every transaction has one of a few currencies
# and countries, and the views a materialization wrote share its timestamp. A lookup decodes each cell by a dict
# look-up of its bytes (map over the reply, no Python call per cell), and `_value` / `_stamp` only the bytes not seen
# yet. Only immutable results are kept (numbers, strings, None); the tables are emptied when full, so they stay
# bounded whatever the data.
_CACHED = 1 << 16
_MISSING: Any = object()
_IMMUTABLE = frozenset({float, int, str, bool, type(None)})
_decoded_values: dict[bytes | None, Any] = {}
_decoded_stamps: dict[bytes | None, float | None] = {}


def _values_of(cells: list[bytes | None]) -> list[Any]:
    """`[_value(raw) for raw in cells]`, decoded once per distinct bytes (`_decoded_values`)."""
    values = list(map(_decoded_values.get, cells, itertools.repeat(_MISSING)))
    if _MISSING in values:
        for i, found in enumerate(values):
            if found is _MISSING:
                raw = cells[i]
                values[i] = decoded = _value(raw)
                if type(decoded) in _IMMUTABLE:
                    if len(_decoded_values) >= _CACHED:
                        _decoded_values.clear()
                    _decoded_values[raw] = decoded
    return values


def _stamp_of(raw: bytes | None) -> float | None:
    """`_stamp(raw)`, decoded once per distinct bytes (`_decoded_stamps`)."""
    stamp = _decoded_stamps.get(raw, _MISSING)
    if stamp is _MISSING:
        stamp = _stamp(raw)
        if len(_decoded_stamps) >= _CACHED:
            _decoded_stamps.clear()
        _decoded_stamps[raw] = stamp
    return stamp  # type: ignore[no-any-return]


def _stamp(raw: bytes | None) -> float | None:
    """`decode_ts` of a stored Timestamp (seconds = 1, nanos = 2, each varint and omitted when 0)."""
    if not raw:
        return None
    seconds = nanos = 0
    at = 0
    try:
        while at < len(raw):
            tag = raw[at]
            if tag == 0x08:
                seconds, at = _varint(raw, at + 1)
            elif tag == 0x10:
                nanos, at = _varint(raw, at + 1)
            else:
                return decode_ts(raw)
    except IndexError:
        return decode_ts(raw)
    if seconds >= 1 << 63 or nanos >= 1 << 31:  # negative (ten-byte varints) or out of range: Feast's decoder
        return decode_ts(raw)
    value = seconds + nanos / 1e9
    return value if value > 0 else None


# ----------------------------------------------------------------------------------------------- columnar decoding
# Feast's ValueProto and Timestamp bytes decoded for whole batches at once: the cells are joined into one buffer
# and each kind of value is read with numpy at its offsets (tests/unit/test_batching.py holds every kind equal to
# `decode_value` / `decode_ts`, per value). A cell of a kind not handled here is left to `decode_value`.
_DOUBLE = 0x29  # Value.double_val = 5, fixed64
_FLOAT = 0x35  # Value.float_val = 6, fixed32
_VARINTS = (0x18, 0x20, 0x38, 0x40)  # int32_val = 3, int64_val = 4, bool_val = 7, unix_timestamp_val = 8
_NULL = b"\x98\x01\x00"  # Value.null_val = 19 (a two-byte tag), NULL_VALUE = 0
_PAD = bytes(32)  # read windows past the last cell stay inside the buffer
_STEPS = np.arange(10)
_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """Where each value sits in a transaction's stretch of the flat script's reply."""

    width: int  # cells per transaction
    fields: dict[str, int]  # transaction field -> position
    features: dict[str, int]  # "view:feature" -> position
    stamps: dict[str, int]  # view -> position of its `_ts:view`
    join_keys: tuple[str, ...]

    @classmethod
    def of(cls, fields: tuple[str, ...], plan: FeaturePlan) -> FlatLayout:
        features: dict[str, int] = {}
        stamps: dict[str, int] = {}
        offset = len(fields) + 1  # the transaction's fields and its own _ts
        for _, group in key_groups(plan.views):
            for view in group:
                for j, feature in enumerate(view.features):
                    features[f"{view.view}:{feature}"] = offset + j
                stamps[view.view] = offset + len(view.features)
                offset += len(view.features) + 1
        return cls(offset, {f: i for i, f in enumerate(fields)}, features, stamps, plan.entity_keys)


def varints(buf: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints starting at the byte offsets `at` of `buf`: (values as uint64, their lengths in bytes).

    A negative int32 or int64 is ten bytes, two's complement: viewed as int64 the value is exact."""
    raw = buf[at[:, None] + _STEPS].astype(np.uint64)
    length = np.argmin(raw >= 0x80, axis=1) + 1  # up to the first byte without the continuation bit
    groups = np.where(length[:, None] > _STEPS, (raw & np.uint64(0x7F)) << _SHIFTS, np.uint64(0))
    return np.bitwise_or.reduce(groups, axis=1), length


def decode_numbers(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ValueProto cells as float64 (NaN: empty or null) and a mask of the cells this does not decode."""
    out = np.full(len(starts), np.nan)
    tag = buf[starts]
    handled = lengths == 0
    double = (tag == _DOUBLE) & (lengths == 9)
    if double.any():
        out[double] = buf[starts[double, None] + 1 + _STEPS[:8]].view("<f8")[:, 0]
    single = (tag == _FLOAT) & (lengths == 5)
    if single.any():
        out[single] = buf[starts[single, None] + 1 + _STEPS[:4]].view("<f4")[:, 0]
    integer = np.isin(tag, _VARINTS) & (lengths >= 2) & (lengths <= 11)
    if integer.any():
        values, used = varints(buf, starts[integer] + 1)
        whole = used + 1 == lengths[integer]
        out[integer] = np.where(whole, values.view(np.int64).astype(np.float64), np.nan)
        integer[integer] = whole
    return out, ~(handled | double | single | integer | _nulls(buf, starts, lengths))


def _nulls(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Cells holding Feast's explicit null (`null_val`)."""
    window = buf[starts[:, None] + _STEPS[:3]]
    nulls: np.ndarray = (lengths == 3) & (window == np.frombuffer(_NULL, dtype=np.uint8)).all(axis=1)
    return nulls


def decode_stamps(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Timestamp cells as epoch seconds (NaN: empty, or not after the epoch, as `decode_ts`) and a mask of the
    cells this does not decode."""
    seconds = np.zeros(len(starts), dtype=np.int64)
    nanos = np.zeros(len(starts), dtype=np.int64)
    position = starts.copy()
    filled = lengths > 0
    for tag, into in ((0x08, seconds), (0x10, nanos)):  # Timestamp.seconds = 1, nanos = 2 (each omitted when 0)
        here = filled & (position < starts + lengths) & (buf[position] == tag)
        if here.any():
            values, used = varints(buf, position[here] + 1)
            into[here] = values.view(np.int64)
            position[here] += used + 1
    value = seconds.astype(np.float64) + nanos / 1e9
    return np.where(filled & (value > 0), value, np.nan), filled & (position != starts + lengths)


def decode_columns(
    layout: FlatLayout, ids: Sequence[str], cells: list[bytes], numeric: Sequence[str]
) -> FeatureColumns:
    """The flat script's reply (len(ids) x layout.width cells) as `FeatureColumns`."""
    count = len(ids)
    lengths = np.fromiter(map(len, cells), dtype=np.int64, count=len(cells)).reshape(count, layout.width)
    starts = (np.cumsum(lengths, axis=None) - lengths.ravel()).reshape(count, layout.width)
    buf = np.frombuffer(b"".join(cells) + _PAD, dtype=np.uint8)

    def cell(row: int, position: int) -> bytes:
        return cells[row * layout.width + position]

    def numbers(positions: list[int]) -> np.ndarray:
        at, size = starts[:, positions], lengths[:, positions]
        values, odd = decode_numbers(buf, at.ravel(), size.ravel())
        for flat in np.flatnonzero(odd):  # a kind of value the vectorised reader does not know: Feast's decoder
            value = decode_value(cell(int(flat) // len(positions), positions[int(flat) % len(positions)]))
            values[flat] = np.nan if value is None else float(value)
        return values.reshape(count, len(positions))

    names = [*layout.features, *(f"{TRANSACTION_VIEW}:{f}" for f in numeric)]
    positions = [*layout.features.values(), *(layout.fields[f] for f in numeric)]
    decoded = numbers(positions) if positions and count else np.empty((count, len(positions)))
    stamps: dict[str, np.ndarray] = {}
    for view, position in layout.stamps.items():
        values, odd = decode_stamps(buf, starts[:, position], lengths[:, position])
        for row in np.flatnonzero(odd):
            stamp = decode_ts(cell(int(row), position))
            values[row] = np.nan if stamp is None else stamp
        stamps[view] = values

    def present(field: str) -> np.ndarray:
        position = layout.fields[field]
        at, size = starts[:, position], lengths[:, position]
        found: np.ndarray = (size > 0) & ~_nulls(buf, at, size)  # what decode_value gives as None
        return found

    return FeatureColumns(
        ids=ids,
        found=present("card_id"),  # every stored transaction has a card
        numbers={name: decoded[:, j] for j, name in enumerate(names)},
        stamps=stamps,
        present={key: present(key) for key in layout.join_keys},
        text=lambda field, row: decode_value(cell(row, layout.fields[field])),
    )
