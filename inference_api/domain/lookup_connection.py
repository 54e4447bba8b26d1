"""The single lookup's Redis connections: an `asyncio.Protocol` whose bytes go straight to hiredis.

Why: the single score's one round trip through redis-py's asyncio `Connection` (a StreamReader, `drain`, the
parser's read loop, a coroutine per layer) and an `asyncio.timeout` around it was about 60-70 us of client CPU,
more than Redis spends on the script. Here the loop's data callback feeds the same `hiredis.Reader` redis-py uses
(its error classes too: `parse_error` gives `NoScriptError`, `AuthenticationError`, ...) and resolves the waiting
call's future itself, and one timer per event loop (`Deadlines`) watches every call's deadline.

What redis-py's path did is kept: connect and handshake as its `Connection.on_connect` (AUTH with a username or a
password, CLIENT SETNAME, CLIENT SETINFO, SELECT), one retry after a connection error on a fresh connection (a
Redis restart closed the kept ones, which are dropped), NOSCRIPT answered by SCRIPT LOAD and the call again, an
error reply read whole keeps its connection, a call that times out or is cancelled closes its connection (its reply
is still on the way). Only TCP and unix sockets with these settings are served here (`LookupConnections.of`);
anything else (TLS, a credential provider, RESP3, keepalive options) stays on redis-py's connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection, Connection, UnixDomainSocketConnection
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    ConnectionError,
    InvalidResponse,
    NoScriptError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

_NOT_ENOUGH: Any = object()  # hiredis' answer while a reply is incomplete
_CLOSED = "Connection closed by server."  # redis-py's message (SERVER_CLOSED_CONNECTION_ERROR)
_EARLY_S = 0.001  # a deadline timer may run up to this much before its time (the loop's clock resolution)


def pack(*args: bytes | str | int | memoryview) -> bytes:
    """A command in RESP (what redis-py's `pack_command` sends for bytes, str and int arguments)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = bytes(arg) if isinstance(arg, bytes | memoryview) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


class RespProtocol(asyncio.Protocol):
    """One Redis connection, one command in flight: `request` writes it, `data_received` resolves its future."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error, notEnoughData=_NOT_ENOUGH
        )
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Any] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def request(self, packed: bytes) -> asyncio.Future[Any]:
        """Send one command; its future gets the reply (an error reply as its exception object, not raised)."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise ConnectionError(_CLOSED)
        self.waiter = waiter = self.loop.create_future()
        transport.write(packed)
        return waiter

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():  # bytes nobody asked for (or for a call given up): out of step
            self.close()
            return
        self.reader.feed(data)
        try:
            reply = self.reader.gets()
        except InvalidResponse as exc:
            self.waiter = None
            waiter.set_exception(exc)
            self.close()
            return
        if reply is _NOT_ENOUGH:
            return
        self.waiter = None
        waiter.set_result(reply)
        if self.reader.has_data():  # more than the one reply asked for
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(_CLOSED if exc is None else f"Error while reading from Redis: {exc}"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Deadlines:
    """The deadlines of every call in flight on one event loop, watched by one timer armed only while calls are
    pending: a call costs an append, not a timer of its own. A call past its deadline fails with TimeoutError (the
    builtin one, as `asyncio.timeout` raises); the timer cancels nothing but that call's future."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[tuple[float, asyncio.Future[Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def watch(self, deadline: float, waiter: asyncio.Future[Any]) -> None:
        self._pending.append((deadline, waiter))
        if deadline < self._at:
            self._arm(deadline)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = at
        self._timer = self._loop.call_at(at, self._expire)

    def _expire(self) -> None:
        self._timer, self._at = None, math.inf
        now = self._loop.time() + _EARLY_S
        waiting = []
        for deadline, waiter in self._pending:
            if waiter.done():
                continue
            if deadline <= now:
                waiter.set_exception(TimeoutError())
            else:
                waiting.append((deadline, waiter))
        self._pending = waiting
        if waiting:
            self._arm(min(deadline for deadline, _ in waiting))


@dataclass(frozen=True)
class Address:
    """Where and how to connect: the settings of redis-py's connection that this module supports."""

    host: str
    port: int
    path: str | None  # a unix socket instead of host and port
    username: str | None
    password: str | None
    db: int
    client_name: str | None
    lib_name: str | None
    lib_version: str | None
    connect_timeout_s: float | None

    def __str__(self) -> str:
        return self.path or f"{self.host}:{self.port}"


# redis-py's connection settings and the values this module serves them with (None: any value, it is read or unused).
_SUPPORTED: dict[str, tuple[Any, ...] | None] = {
    "host": None, "port": None, "path": None, "db": None, "username": None, "password": None, "client_name": None,
    "driver_info": None, "socket_connect_timeout": None,
    "socket_timeout": None,  # the lookup's deadline bounds every read instead
    "retry": None, "retry_on_error": None,  # the lookup's own retry: one, after a connection error
    "encoding": None, "encoding_errors": None,  # replies stay bytes (decode_responses off)
    "health_check_interval": None,  # redis-py's lookup path sent without a health check too
    "decode_responses": (False,), "credential_provider": (None,), "redis_connect_func": (None,),
    "protocol": (2, "2", None), "socket_keepalive": (None, False), "socket_keepalive_options": (None, {}),
}  # fmt: skip


class LookupConnections:
    """Connections the single lookup keeps for itself, one call in flight on each, taken one per call."""

    def __init__(self, address: Address, budget_s: float) -> None:
        self.address = address
        self.budget_s = budget_s
        self._idle: list[RespProtocol] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: Deadlines | None = None

    @classmethod
    def of(
        cls, connection_class: type[AbstractConnection], kwargs: dict[str, Any], budget_s: float
    ) -> LookupConnections | None:
        """For redis-py's pool settings, or None when they need redis-py's own connection (TLS and the like)."""
        if connection_class not in (Connection, UnixDomainSocketConnection):
            return None
        for name, value in kwargs.items():
            if name not in _SUPPORTED:
                return None
            allowed = _SUPPORTED[name]
            if allowed is not None and not any(value is v or (type(value) is type(v) and value == v) for v in allowed):
                return None
        driver = kwargs.get("driver_info")
        path = kwargs.get("path") if connection_class is UnixDomainSocketConnection else None
        address = Address(
            host=str(kwargs.get("host", "localhost")),
            port=int(kwargs.get("port", 6379)),
            path=path,
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            db=int(kwargs.get("db") or 0),
            client_name=kwargs.get("client_name"),
            lib_name=getattr(driver, "formatted_name", None),
            lib_version=getattr(driver, "lib_version", None),
            connect_timeout_s=kwargs.get("socket_connect_timeout"),
        )
        return cls(address, budget_s)

    async def evalsha(self, packed: bytes, script: bytes | str | memoryview) -> Any:
        """`packed` (`EVALSHA` of `script`'s sha) within the budget: the reply, or the error redis-py's path raised (a
        ResponseError of the script, ConnectionError after the retry) or TimeoutError at the deadline."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections and timers belong to one loop
            self._idle, self._loop, self._deadlines = [], loop, Deadlines(loop)
        deadline = loop.time() + self.budget_s
        for attempt in (0, 1):
            connection = self._take()
            try:
                if connection is None:
                    connection = await self._open(deadline)
                try:
                    reply = await self._call(connection, packed, deadline)
                except NoScriptError:  # Redis lost the script (a restart, SCRIPT FLUSH): load it, call again
                    await self._call(connection, pack(b"SCRIPT", b"LOAD", script), deadline)
                    reply = await self._call(connection, packed, deadline)
            except (ConnectionError, RedisTimeoutError):
                if connection is not None:
                    connection.close()
                stale, self._idle = self._idle, []
                for other in stale:
                    other.close()
                if attempt:
                    raise
                continue
            except ResponseError:  # read whole: the connection is in step (one that failed its handshake is closed)
                if connection is not None and not connection.closed:
                    self._idle.append(connection)
                raise
            except BaseException:  # a deadline, a cancel: the reply may still come
                if connection is not None:
                    connection.close()
                raise
            self._idle.append(connection)
            return reply
        raise AssertionError("unreachable")

    def _take(self) -> RespProtocol | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:  # one the server closed meanwhile (a restart) is seen here, not on a call
                return connection
        return None

    async def _call(self, connection: RespProtocol, packed: bytes, deadline: float) -> Any:
        waiter = connection.request(packed)
        assert self._deadlines is not None
        self._deadlines.watch(deadline, waiter)
        reply = await waiter
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _open(self, deadline: float) -> RespProtocol:
        """A connection, its handshake done, within the deadline (and redis-py's connect timeout, if shorter)."""
        address, loop = self.address, asyncio.get_running_loop()
        timeout_s = address.connect_timeout_s
        limit = deadline if timeout_s is None else min(deadline, loop.time() + timeout_s)
        connection: RespProtocol | None = None
        try:
            async with asyncio.timeout_at(limit):
                if address.path is not None:
                    _, connection = await loop.create_unix_connection(RespProtocol, address.path)
                else:
                    transport, connection = await loop.create_connection(RespProtocol, address.host, address.port)
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await self._handshake(connection, deadline)
        except TimeoutError:
            if connection is not None:
                connection.close()
            if loop.time() + _EARLY_S >= deadline:
                raise
            raise RedisTimeoutError("Timeout connecting to server") from None
        except OSError as exc:
            raise ConnectionError(f"Error {exc.errno} connecting to {address}. {exc.strerror or exc}.") from exc
        except BaseException:
            if connection is not None:
                connection.close()
            raise
        return connection

    async def _handshake(self, connection: RespProtocol, deadline: float) -> None:
        """redis-py's `on_connect` for RESP2: AUTH, CLIENT SETNAME, CLIENT SETINFO (errors ignored), SELECT."""
        address = self.address
        if address.username or address.password:
            credentials = [c for c in (address.username, address.password) if c is not None]
            try:
                answer = await self._call(connection, pack(b"AUTH", *credentials), deadline)
            except AuthenticationWrongNumberOfArgsError:  # a Redis before 6 takes the password alone
                answer = await self._call(connection, pack(b"AUTH", credentials[-1]), deadline)
            if answer != b"OK":
                raise AuthenticationError("Invalid Username or Password")
        named = address.client_name
        if named and await self._call(connection, pack(b"CLIENT", b"SETNAME", named), deadline) != b"OK":
            raise ConnectionError("Error setting client name")
        for field, value in ((b"LIB-NAME", address.lib_name), (b"LIB-VER", address.lib_version)):
            if value:
                with contextlib.suppress(ResponseError):  # a Redis before 7.2 does not know it
                    await self._call(connection, pack(b"CLIENT", b"SETINFO", field, value), deadline)
        if address.db and await self._call(connection, pack(b"SELECT", address.db), deadline) != b"OK":
            raise ConnectionError("Invalid Database")

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
