"""Registry change notices: a Redis stream that API instances follow, so that a promotion reaches them at once.

The registry's files stay the truth; a notice only says "look again now". A stream rather than pub/sub: one key
behaves the same on a single Redis and on a Redis Cluster (redis-py's asyncio cluster client has no pub/sub), a
listener that lost its connection goes on from the last id it saw instead of missing what was sent meanwhile,
and `XRANGE fraudserve:registry:changes - +` shows the recent changes. Each API instance still polls the
registry every `FRAUDSERVE_MODEL_POLL_SECONDS`, so a notice that cannot be sent (Redis down) only delays a swap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import redis
from redis.exceptions import RedisClusterException

log = logging.getLogger("fraudserve.registry")
# redis-py raises RedisClusterException, not a RedisError, when no node of a cluster answers.
UNAVAILABLE = (redis.RedisError, RedisClusterException, OSError)

NOTICES = "fraudserve:registry:changes"
MAX_NOTICES = 1000  # kept in the stream (approximately); listeners need only the ones since they last read


class Notices(Protocol):
    def publish(self, name: str, change: str, version: int) -> None: ...


class RedisNotices:
    """Appends one entry per change: model name, what changed (register, promote, rollback) and the version.

    `connect` makes the client on first use: a cluster client connects when made, and a process that opens the
    registry without changing it (the API) must not depend on Redis for that."""

    def __init__(self, connect: Callable[[], redis.Redis | redis.RedisCluster]) -> None:
        self.connect = connect
        self.client: Any = None  # redis-py's sync methods are typed as `Awaitable[T] | T`

    def publish(self, name: str, change: str, version: int) -> None:
        try:
            if self.client is None:
                self.client = self.connect()
            self.client.xadd(
                NOTICES, {"model": name, "change": change, "version": version}, maxlen=MAX_NOTICES, approximate=True
            )
        except UNAVAILABLE as exc:
            log.warning(
                "registry change notice not sent; API instances pick the change up at their next poll",
                extra={"model": name, "change": change, "version": version, "error": str(exc)},
            )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def follow(
    client: Any, name: str, on_change: Callable[[], Awaitable[object]], block_ms: int = 5000, retry_s: float = 1.0
) -> None:
    """Call `on_change` whenever a notice about model `name` arrives; runs until cancelled.

    `client` is a redis-py asyncio client (single node or cluster) whose socket timeout exceeds `block_ms`.
    Redis errors never end it: it waits `retry_s` and reads again from the last id it saw."""
    last: str | None = None
    failing = False
    while True:
        try:
            if last is None:  # start after the newest notice: older ones are already reflected in the registry
                newest = await client.xrevrange(NOTICES, count=1)
                last = _text(newest[0][0]) if newest else "0-0"
            reply = await client.xread({NOTICES: last}, block=block_ms, count=100)
            if failing:
                log.info("registry change notices followed again")
                failing = False
        except UNAVAILABLE as exc:
            if not failing:
                log.warning("cannot read registry change notices; polling only", extra={"error": str(exc)})
                failing = True
            await asyncio.sleep(retry_s)
            continue
        if not reply:
            continue
        entries = reply[0][1]
        last = _text(entries[-1][0])
        if any(_text(fields.get(b"model", b"")) == name for _, fields in entries):
            await on_change()
