"""The single lookup's protocol connections (inference_api/domain/lookup_connection.py) against a real redis-server:
the replies redis-py's own connection gives, of every RESP type the lookup gets; an error reply, NOSCRIPT, Redis
restarted and stopped between calls, a deadline that fires while the reply is awaited, a cancelled call, AUTH with
a password and with a user, a unix socket; and which connection strings stay on redis-py's connections."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.connections import async_redis_client
from inference_api.domain.features import STORE_ERRORS, store_unavailable
from inference_api.domain.lookup_connection import LookupConnections, pack
from inference_api.domain.redis_source import evalsha_command
from tests.redis_process import RedisProcess

BUDGET_S = 0.25


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path / "redis").start()
    try:
        yield process
    finally:
        process.stop()


def _connections(connection: str, budget_s: float = BUDGET_S) -> LookupConnections:
    client = async_redis_client(connection, False, socket_timeout=budget_s, socket_connect_timeout=budget_s,
                                retry=Retry(NoBackoff(), 1))  # fmt: skip  # as RedisFeatureSource makes its client
    pool = client.connection_pool
    lookup = LookupConnections.of(pool.connection_class, pool.connection_kwargs, budget_s)
    assert lookup is not None, connection
    return lookup


async def _run(lookup: LookupConnections, script: str, keys: list[bytes]) -> Any:
    sha = hashlib.sha1(script.encode()).hexdigest()
    return await lookup.evalsha(evalsha_command(sha, keys), script)


async def _redis_py(port: int, script: str, keys: list[bytes]) -> Any:
    client = aioredis.Redis(port=port)
    try:
        return await client.eval(script, len(keys), *keys)  # type: ignore[misc]
    finally:
        await client.aclose()


# Replies of each kind the lookup's script gives (nested arrays of bulk strings and nils, Lua's dropped trailing
# nils, empty arrays), and the other RESP types a script can answer.
SCRIPTS = {
    "nested": "return {redis.call('HMGET', KEYS[1], 'a', 'b', 'nope'), false, {KEYS[2], {}}, {false, 'x'}}",
    "integer": "return 42",
    "negative": "return -7",
    "status": "return redis.status_reply('FINE')",
    "nil": "return false",
    "empty": "return {}",
    "binary": "return KEYS[2]",
    "large": "local t = {} for i = 1, 3000 do t[i] = string.rep('v', 97) .. i end return t",  # several reads
    "error in an array": "return {1, redis.error_reply('inner')}",
}


def test_every_reply_is_what_redis_py_gives(server: RedisProcess) -> None:
    server.client().hset("h", mapping={"a": b"\x00\xff\r\n", "b": b""})
    keys = [b"h", bytes(range(256))]

    async def both() -> list[tuple[str, Any, Any]]:
        lookup = _connections(server.connection_string)
        out = []
        for name, script in SCRIPTS.items():
            out.append((name, await _run(lookup, script, keys), await _redis_py(server.port, script, keys)))
        lookup.close()
        return out

    replies = asyncio.run(both())
    for name, ours, theirs in replies:
        if name == "error in an array":
            assert ours[0] == theirs[0] == 1 and type(ours[1]) is type(theirs[1]) and str(ours[1]) == str(theirs[1])
        else:
            assert ours == theirs, name
    assert len(dict((name, ours) for name, ours, _ in replies)["large"]) == 3000


def test_an_error_reply_is_raised_and_keeps_the_connection(server: RedisProcess) -> None:
    async def scenario() -> tuple[str, bool, int]:
        lookup = _connections(server.connection_string)
        assert await _run(lookup, "return 1", []) == 1
        first = lookup._idle[0]
        with pytest.raises(redis.ResponseError) as raised:
            await _run(lookup, "return redis.error_reply('boom')", [])
        kept = lookup._idle == [first] and not first.closed
        with pytest.raises(redis.ResponseError):
            await _run(lookup, "return redis.call('INCR', KEYS[1])", [b"text"])  # WRONGTYPE
        answer = await _run(lookup, "return 2", [])
        lookup.close()
        return str(raised.value), kept, answer

    server.client().set(b"text", b"abc")
    message, kept, answer = asyncio.run(scenario())
    assert "boom" in message and kept and answer == 2


def test_a_lost_script_is_loaded_again(server: RedisProcess) -> None:
    script = "return 'loaded'"

    async def scenario() -> list[Any]:
        lookup = _connections(server.connection_string)
        answers = [await _run(lookup, script, [])]  # never loaded: NOSCRIPT, SCRIPT LOAD, EVALSHA
        server.client().script_flush()
        answers.append(await _run(lookup, script, []))
        answers.append(await _run(lookup, script, []))  # loaded: straight through
        lookup.close()
        return answers

    assert asyncio.run(scenario()) == [b"loaded"] * 3
    stats: Any = server.client().info("commandstats")
    assert stats["cmdstat_script|load"]["calls"] == 2 and stats["cmdstat_evalsha"]["calls"] == 5


def test_redis_restarted_between_calls_and_down(server: RedisProcess) -> None:
    async def scenario() -> None:
        lookup = _connections(server.connection_string)
        # several kept connections, as concurrent lookups leave them
        assert await asyncio.gather(*(_run(lookup, "return 1", []) for _ in range(4))) == [1] * 4
        assert len(lookup._idle) == 4
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)  # the kept connections were closed by the restart
        assert await asyncio.gather(*(_run(lookup, "return 3", []) for _ in range(4))) == [3] * 4
        await asyncio.to_thread(server.kill)
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError) as raised:
            await _run(lookup, "return 4", [])
        assert time.monotonic() - started < BUDGET_S  # refused at once, after one retry, not the whole budget
        assert store_unavailable(raised.value, BUDGET_S).details == {"reason": "ConnectionError"}
        assert lookup._idle == []
        await asyncio.to_thread(server.start)
        assert await _run(lookup, "return 5", []) == 5
        lookup.close()

    asyncio.run(scenario())


def test_a_kept_connection_closed_unseen_is_retried_once(server: RedisProcess) -> None:
    """A connection closed while its call is on the way (not seen while idle) is retried on a fresh one."""

    async def scenario() -> None:
        lookup = _connections(server.connection_string)
        assert await _run(lookup, "return 1", []) == 1
        kept = lookup._idle[0]
        kept.closed = False  # as if the close were not seen yet
        assert kept.transport is not None
        kept.transport.close()
        assert await _run(lookup, "return 2", []) == 2
        assert lookup._idle and lookup._idle[0] is not kept
        lookup.close()

    asyncio.run(scenario())


def test_a_deadline_mid_read_times_out_and_closes_the_connection(server: RedisProcess) -> None:
    async def scenario() -> None:
        lookup = _connections(server.connection_string, budget_s=0.1)
        assert await _run(lookup, "return 1", []) == 1
        connection = lookup._idle[0]
        server.client().client_pause(400, all=True)  # the reply is held back
        started = time.monotonic()
        with pytest.raises(TimeoutError) as raised:
            await _run(lookup, "return 2", [])
        elapsed = time.monotonic() - started
        assert 0.09 <= elapsed < 0.4, elapsed  # a loaded machine runs the timer late
        assert isinstance(raised.value, STORE_ERRORS)
        assert store_unavailable(raised.value, 0.1).message.startswith("the online store did not answer within 100 ms")
        assert connection.closed and lookup._idle == []
        await asyncio.sleep(0.4)
        assert await _run(lookup, "return 3", []) == 3  # a fresh connection; the late reply went with the old one
        lookup.close()

    asyncio.run(scenario())


def test_many_calls_share_one_deadline_timer(server: RedisProcess) -> None:
    """Calls in flight together each time out at their own deadline; answered ones are not touched."""

    async def scenario() -> None:
        lookup = _connections(server.connection_string, budget_s=0.15)
        assert await asyncio.gather(*(_run(lookup, "return 1", []) for _ in range(50))) == [1] * 50
        server.client().client_pause(300, all=True)
        first = asyncio.gather(*(_run(lookup, "return 1", []) for _ in range(3)), return_exceptions=True)
        await asyncio.sleep(0.05)
        second = asyncio.gather(*(_run(lookup, "return 1", []) for _ in range(3)), return_exceptions=True)
        started = time.monotonic()
        answers = await first
        first_at = time.monotonic() - started
        answers += await second
        second_at = time.monotonic() - started
        assert all(isinstance(a, TimeoutError) for a in answers), answers
        assert 0.08 <= first_at < 0.35 and 0.13 <= second_at < 0.4 and second_at > first_at, (first_at, second_at)
        await asyncio.sleep(0.3)
        assert await _run(lookup, "return 9", []) == 9
        lookup.close()

    asyncio.run(scenario())


def test_a_cancelled_call_closes_its_connection(server: RedisProcess) -> None:
    async def scenario() -> None:
        lookup = _connections(server.connection_string)
        assert await _run(lookup, "return 1", []) == 1
        connection = lookup._idle[0]
        server.client().client_pause(200, all=True)
        call = asyncio.ensure_future(_run(lookup, "return 2", []))
        await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert connection.closed and lookup._idle == []
        await asyncio.sleep(0.25)
        assert await _run(lookup, "return 3", []) == 3
        lookup.close()

    asyncio.run(scenario())


def test_auth_with_a_password_and_with_a_user(server: RedisProcess) -> None:
    admin = server.client()
    admin.acl_setuser("scorer", enabled=True, passwords=["+scorer-secret"], keys=["*"], commands=["+@all"])
    admin.config_set("requirepass", "s3cret")
    admin = redis.Redis(port=server.port, password="s3cret")
    admin.select(3)
    redis.Redis(port=server.port, password="s3cret", db=3).set(b"k", b"db3")
    try:
        script = "return redis.call('GET', KEYS[1])"

        async def scenario() -> list[Any]:
            answers = []
            for extra in (",password=s3cret,db=3", ",username=scorer,password=scorer-secret,db=3"):
                lookup = _connections(server.connection_string + extra)
                answers.append(await _run(lookup, script, [b"k"]))
                lookup.close()
            lookup = _connections(server.connection_string + ",password=wrong")
            with pytest.raises(redis.AuthenticationError):
                await _run(lookup, script, [b"k"])
            lookup = _connections(server.connection_string)  # no password: NOAUTH
            with pytest.raises(redis.AuthenticationError):
                await _run(lookup, script, [b"k"])
            return answers

        assert asyncio.run(scenario()) == [b"db3", b"db3"]
    finally:
        redis.Redis(port=server.port, password="s3cret").config_set("requirepass", "")


def test_a_unix_socket(tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    assert binary is not None
    path = tmp_path / "redis.sock"
    process = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(path), "--save", "", "--dir",
                                str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
            time.sleep(0.02)
        lookup = _connections(f'localhost:0,unix_socket_path="{path}"')
        assert lookup.address.path == str(path)
        assert asyncio.run(_run(lookup, "return 'unix'", [])) == b"unix"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    "extra",
    [",ssl=true", ",protocol=3", ",socket_keepalive=true", ",client_name=scorer", ",decode_responses=true"],
)
def test_what_stays_on_redis_py(extra: str) -> None:
    """TLS and settings this module does not implement keep redis-py's connections (client_name is served)."""
    client = async_redis_client("127.0.0.1:6379" + extra, False, socket_timeout=1.0, socket_connect_timeout=1.0)
    pool = client.connection_pool
    lookup = LookupConnections.of(pool.connection_class, pool.connection_kwargs, 1.0)
    assert (lookup is not None) == (extra == ",client_name=scorer")


def test_pack_is_redis_pys() -> None:
    connection = aioredis.Connection()
    for args in ((b"SCRIPT", b"LOAD", "return 'é'"), (b"SELECT", 3), (b"AUTH", "user", "p\r\nw")):
        assert pack(*args) == b"".join(connection.pack_command(*args))
