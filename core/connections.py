"""Redis clients for Feast's connection-string form (`host:port,ssl=true,password=...`, one node or a cluster): the
online store's Redis as the API, the stream worker, the registry's notices and the CLI open it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.settings import Settings


def redis_client(settings: Settings, connection: str, timeout_s: float | None = None) -> Any:
    """A synchronous redis-py client for Feast's connection-string form (single node or cluster)."""
    import redis

    nodes, params = parse_connection_string(connection)
    if timeout_s is not None:
        params = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, **params}
    if settings.redis_type.value == "redis_cluster":
        startup = [redis.cluster.ClusterNode(n["host"], int(n["port"])) for n in nodes]  # type: ignore[no-untyped-call]
        return redis.RedisCluster(startup_nodes=startup, **params)
    return redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)


def async_redis_client(connection: str, cluster: bool, **options: Any) -> Any:
    """redis-py's asyncio client (single node or cluster) for Feast's connection-string form; `options` (timeouts,
    retry) are the client's, and the connection string's own parameters take precedence over them."""
    import redis.asyncio as aioredis

    nodes, params = parse_connection_string(connection)
    options.update(params)
    if cluster:
        startup = [aioredis.cluster.ClusterNode(n["host"], int(n["port"])) for n in nodes]
        return aioredis.RedisCluster(startup_nodes=startup, **options)
    return aioredis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **options)


def parse_connection_string(connection: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Feast's Redis connection string (`RedisOnlineStore._parse_connection_string`): nodes `host:port` and
    parameters `name=value` (values JSON-decoded when they are JSON), without importing Feast."""
    import json

    nodes = [
        dict(zip(["host", "port"], part.split(":"), strict=False)) for part in connection.split(",") if "=" not in part
    ]
    params: dict[str, Any] = {}
    for part in connection.split(","):
        if "=" in part:
            name, value = part.split("=", 1)
            try:
                params[name] = json.loads(value)
            except json.JSONDecodeError:
                params[name] = value
    return nodes, params
