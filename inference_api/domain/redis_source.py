"""Feast's Redis online layout read directly: one pipelined round trip per lookup, nothing resolved per request.

The keys and hash fields are built with Feast's own helpers (`serialize_entity_key`, `_mmh3`), so this reads
exactly what Feast's materialize (and the stream worker's pushes) wrote: the hash of an entity key holds one field
per feature (`mmh3("view:feature")` → a serialized ValueProto) and `_ts:view` (a Timestamp). Field names are
hashed once per feature plan, not per request. The integration tests compare its vectors with Feast's SDK.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException

from core.connections import async_redis_client
from inference_api.domain.features import TransactionRecord, ViewValues, within_budget
from inference_api.domain.plan import FeaturePlan, ViewRead, transaction_layout
from pipelines.features.catalog import TRANSACTION_VIEW
from pipelines.online_layout import decode_ts, decode_value, entity_key, feature_field, key_prefix, ts_field

if TYPE_CHECKING:
    from feast import FeatureStore


def _fields(view: str, features: tuple[str, ...]) -> tuple[bytes | str, ...]:
    return (*(feature_field(view, f) for f in features), ts_field(view))


# One round trip for a transaction and its views' features: HMGET the transaction's hash, take each join key's value
# from its stored ValueProto (field 2, string_val: 0x12, varint length, bytes), build Feast's v3 entity key and HMGET
# the fields of every view keyed by it (several views may share a join key, e.g. a window view and a batch view of
# merchant_id: Feast keeps them in one hash, read by one HMGET). The plan (project, field names, key prefixes) is
# written into the script as literals (`_lookup_script`), one script per feature plan, so a call carries only the
# transaction keys. Keys are derived inside the script, so it runs on a single Redis only; on a cluster the reader
# makes two round trips.
_LOOKUP_BODY = """
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


def _lookup_script(project: bytes, fields: tuple[str, ...], views: tuple[ViewRead, ...]) -> str:
    """The one-round-trip lookup for a plan's views, its constants as literals."""
    tfields = ", ".join(_lua(f) for f in _fields(TRANSACTION_VIEW, fields))
    entries = []
    for join_key, group in key_groups(views):
        index = fields.index(join_key) + 1
        hashed = ", ".join(_lua(f) for f in _group_fields(group))
        entries.append(f"{{index = {index}, prefix = {_lua(key_prefix(join_key))}, fields = {{{hashed}}}}}")
    header = f"local project = {_lua(project)}\nlocal tfields = {{{tfields}}}\nlocal views = {{{', '.join(entries)}}}\n"
    return header + _LOOKUP_BODY


def _split(group: tuple[ViewRead, ...], reply: list[bytes | None] | None) -> dict[str, ViewValues]:
    """Each view's values from one key's HMGET reply (None: the transaction has no value of the key)."""
    out: dict[str, ViewValues] = {}
    start = 0
    for view in group:
        width = len(view.features) + 1
        out[view.view] = _view_values(view, None if reply is None else reply[start : start + width])
        start += width
    return out


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
        self.project = store.config.project.encode()
        self.version = store.config.entity_key_serialization_version
        self.budget_s = budget_s
        # The one-round-trip read needs a single Redis and Feast's v3 keys; otherwise two pipelined round trips.
        self.fused = isinstance(self.client, aioredis.Redis) and self.version == 3
        self._scripts: dict[int, tuple[AsyncScript, tuple[ViewRead, ...]]] = {}
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

    def _script_for(self, plan: FeaturePlan) -> AsyncScript:
        """The lookup script of a plan, registered once per plan (redis-py reloads it if Redis lost it)."""
        cached = self._scripts.get(id(plan))
        if cached is None or cached[1] is not plan.views:
            assert isinstance(self.client, aioredis.Redis)
            script = _lookup_script(self.project, self.fields, plan.views)
            cached = (self.client.register_script(script), plan.views)
            self._scripts[id(plan)] = cached
        return cached[0]

    async def _transactions_with_views(
        self, ids: Sequence[str], keys: list[bytes], plan: FeaturePlan
    ) -> list[TransactionRecord | None]:
        script = self._script_for(plan)
        replies: list[list[Any]] = await within_budget(script(keys=keys), self.budget_s)
        groups = key_groups(plan.views)
        records: list[TransactionRecord | None] = []
        for transaction_id, (reply, *by_key) in zip(ids, replies, strict=True):
            record = _record(self.fields, transaction_id, reply)
            if record is not None:
                by_view: dict[str, ViewValues] = {}
                for (_, group), raw in zip(groups, _pad(by_key, len(groups)), strict=True):
                    by_view.update(_split(group, raw or None))
                record = dataclasses.replace(record, views=by_view, views_plan=plan)
            records.append(record)
        return records

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
        await self.client.aclose()


def _pad(replies: list[Any], count: int) -> list[Any]:
    """Lua drops trailing nils (`false` here) of a table: the missing ones are keys the transaction has no value of."""
    return [*replies, *([False] * (count - len(replies)))]


def _record(fields: tuple[str, ...], transaction_id: str, reply: list[bytes | None]) -> TransactionRecord | None:
    row = {name: decode_value(raw) for name, raw in zip(fields, reply[:-1], strict=True)}
    if row.get("card_id") is None:  # every stored transaction has a card
        return None
    return TransactionRecord(transaction_id, row, stored_at=decode_ts(reply[-1]))


def _view_values(view: ViewRead, reply: list[bytes | None] | None) -> ViewValues:
    """One view's values and timestamp from its HMGET reply (None: the entity has no id on this transaction)."""
    if reply is None:
        return ViewValues(dict.fromkeys(view.features), None)
    values = {f: decode_value(raw) for f, raw in zip(view.features, reply[:-1], strict=True)}
    return ViewValues(values, decode_ts(reply[-1]))
