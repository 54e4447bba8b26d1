"""`fraudserve serve`'s HTTP protocol (uvicorn's httptools one on a `HeldHead` transport): a response's head and
body in one write, a head whose body comes later still sent at once, and real responses over a socket unchanged:
plain, streamed, chunked, closing, pipelined."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from fraudserve.commands.serve import HeldHead


class Recorder:
    """A transport that records what is written and done to it."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def write(self, data: bytes) -> None:
        self.events.append(bytes(data))

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def test_a_head_and_its_body_go_in_one_write() -> None:
    async def scenario() -> list[Any]:
        recorder = Recorder()
        held = HeldHead(recorder)  # type: ignore[arg-type]
        held.write(b"HEAD ")
        assert recorder.events == [] and held.get_write_buffer_size() == 5
        held.write(b"body")
        held.write(b"more")  # a third write in the same turn goes straight out
        await asyncio.sleep(0)
        held.write(b"alone")  # no body in this turn: sent at the end of it
        await asyncio.sleep(0)
        held.write(b"last")
        held.close()  # what is held goes first
        held.write(b"dropped")
        held.abort()
        assert not held.is_closing()  # the rest is the transport's own
        return recorder.events

    assert asyncio.run(scenario()) == [b"HEAD body", b"more", b"alone", b"last", "close", "abort"]


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    while (await receive()).get("more_body"):
        pass
    if path == "/stream":  # a head, then its body in two parts a moment later (chunked)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
        await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"part two"})
        return
    body = b'{"path": "%s"}' % path.encode()
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    if path == "/close":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, port=port, http="fraudserve.commands.serve:OneWriteHttp", loop="uvloop",
                            log_config=None, access_log=False, lifespan="off")  # fmt: skip
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not runner.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield port
    runner.should_exit = True
    thread.join(timeout=10)


def _exchange(port: int, raw: bytes, until: bytes, count: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(raw)
        got = b""
        while got.count(until) < count:
            chunk = connection.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_responses_over_a_socket(server: int) -> None:
    request = b"POST /%s HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"
    plain = _exchange(server, request % b"one", b'"/one"}')
    assert plain.startswith(b"HTTP/1.1 201 Created\r\n") and plain.endswith(b'\r\n\r\n{"path": "/one"}')
    assert b"content-length: 16\r\n" in plain
    # pipelined on one connection: both answered, in order
    both = _exchange(server, request % b"a" + request % b"b", b"}", count=2)
    assert both.index(b'{"path": "/a"}') < both.index(b'{"path": "/b"}') and both.count(b"HTTP/1.1 201") == 2
    streamed = _exchange(server, request % b"stream", b"0\r\n\r\n")
    assert b"transfer-encoding: chunked\r\n" in streamed and streamed.endswith(
        b"a\r\npart one, \r\n8\r\npart two\r\n0\r\n\r\n"
    )
    closing = _exchange(server, request % b"close", b"never")  # read to the server's close
    assert closing.endswith(b'{"path": "/close"}') and b"connection: close\r\n" in closing


def test_a_streamed_head_is_sent_before_its_body(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as connection:
        connection.sendall(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        head = connection.recv(65536)  # the head alone, not held the 0.3 s until the body
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n") and b"part" not in head
