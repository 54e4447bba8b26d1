"""Feast's Redis online layout read directly: one pipelined round trip per lookup, nothing resolved per request.

The keys and hash fields are built with Feast's own helpers (`serialize_entity_key`, `_mmh3`), so this reads
exactly what Feast's materialize (and the stream worker's pushes) wrote: the hash of an entity key holds one field
per feature (`mmh3("view:feature")` → a serialized ValueProto) and `_ts:view` (a Timestamp). Field names are
hashed once per feature plan, not per request. The integration tests compare its vectors with Feast's SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis

from inference_api.domain.features import TransactionRecord, ViewValues, within_budget
from inference_api.domain.plan import FeaturePlan
from pipelines.features.catalog import TRANSACTION, TRANSACTION_FIELDS
from pipelines.online_layout import decode_ts, decode_value, entity_key, feature_field, ts_field

if TYPE_CHECKING:
    from feast import FeatureStore


def _fields(view: str, features: tuple[str, ...]) -> tuple[bytes | str, ...]:
    return (*(feature_field(view, f) for f in features), ts_field(view))


class RedisFeatureSource:
    """`FeatureSource` over Feast's Redis layout, with redis-py's asyncio client (hiredis parser)."""

    def __init__(self, store: FeatureStore, budget_s: float) -> None:
        from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType

        config = store.config.online_store
        if not isinstance(config, RedisOnlineStoreConfig):
            raise TypeError("RedisFeatureSource needs Feast's Redis online store")
        nodes, params = RedisOnlineStore._parse_connection_string(config.connection_string)
        options = {"socket_timeout": budget_s, "socket_connect_timeout": budget_s, **params}
        self.client: aioredis.Redis | aioredis.RedisCluster
        if config.redis_type == RedisType.redis_cluster:
            startup = [aioredis.cluster.ClusterNode(n["host"], int(n["port"])) for n in nodes]
            self.client = aioredis.RedisCluster(startup_nodes=startup, **options)
        else:
            self.client = aioredis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **options)
        self.project = store.config.project.encode()
        self.version = store.config.entity_key_serialization_version
        self.budget_s = budget_s

    def _key(self, join_key: str, value: str) -> bytes:
        return entity_key(self.project, join_key, value, self.version)

    async def _hmget_all(self, commands: list[tuple[bytes, tuple[bytes | str, ...]]]) -> list[list[bytes | None]]:
        pipe = self.client.pipeline(transaction=False)
        for key, fields in commands:
            pipe.hmget(key, list(fields))  # type: ignore[arg-type]  # bytes keys are fine
        replies: list[list[bytes | None]] = await within_budget(pipe.execute(), self.budget_s)
        return replies

    async def transactions(self, ids: Sequence[str]) -> list[TransactionRecord | None]:
        fields = _fields(TRANSACTION.view, tuple(TRANSACTION_FIELDS))
        replies = await self._hmget_all([(self._key(TRANSACTION.join_key, i), fields) for i in ids])
        records: list[TransactionRecord | None] = []
        for transaction_id, reply in zip(ids, replies, strict=True):
            values = [decode_value(raw) for raw in reply[:-1]]
            row = dict(zip(TRANSACTION_FIELDS, values, strict=True))
            if row["card_id"] is None:
                records.append(None)
                continue
            records.append(TransactionRecord(transaction_id=transaction_id, stored_at=decode_ts(reply[-1]), **row))
        return records

    async def views(self, plan: FeaturePlan, records: Sequence[TransactionRecord]) -> list[dict[str, ViewValues]]:
        commands = []
        wanted = []
        for record in records:
            for view in plan.views:
                key = record.key(view.entity.join_key)
                if key is not None:
                    commands.append((self._key(view.entity.join_key, key), _fields(view.entity.view, view.features)))
                    wanted.append((record, view))
        replies = iter(await self._hmget_all(commands)) if commands else iter(())
        result: list[dict[str, ViewValues]] = []
        for record in records:
            by_view: dict[str, ViewValues] = {}
            for view in plan.views:
                if record.key(view.entity.join_key) is None:
                    by_view[view.entity.view] = ViewValues(dict.fromkeys(view.features), None)
                    continue
                reply = next(replies)
                values = {f: decode_value(raw) for f, raw in zip(view.features, reply[:-1], strict=True)}
                by_view[view.entity.view] = ViewValues(values, decode_ts(reply[-1]))
            result.append(by_view)
        return result

    async def ping(self) -> bool:
        try:
            pong: Any = self.client.ping()
            return bool(await asyncio.wait_for(pong, timeout=self.budget_s))
        except (redis.RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.client.aclose()
