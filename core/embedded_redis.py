"""The local redis-server that the CLI owns when FRAUDSERVE_REDIS is unset.

Its data (append-only file, fsync every second) lives under FRAUDSERVE_HOME/redis, so features survive restarts.
A state file records the running server; every CLI command reuses a live one, and the command that started a
server stops it cleanly (SHUTDOWN, which flushes the AOF) when it ends, unless it was started detached
(`fraudserve redis start`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.errors import ConfigurationError

START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RunningServer:
    pid: int
    port: int

    @property
    def connection_string(self) -> str:
        return f"127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port that is free now, below 55536 so that a cluster bus port (port + 10000) fits too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < 55536:
            return port
    raise ConfigurationError("no free TCP port below 55536 on 127.0.0.1")


def _client(port: int, timeout: float) -> redis.Redis:
    """A client that fails at once instead of retrying: probing and shutting down must not wait on backoff."""
    return redis.Redis(
        port=port, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), retries=0)
    )


def ping(port: int, timeout: float = 0.5) -> bool:
    try:
        return bool(_client(port, timeout).ping())
    except redis.RedisError:
        return False


class EmbeddedRedis:
    """A redis-server process with its data in `directory`."""

    def __init__(self, directory: Path, binary: str = "redis-server") -> None:
        self.directory = directory
        self.binary = binary
        self._state = directory / "server.json"
        self._lock = directory / "server.lock"

    def running(self) -> RunningServer | None:
        """The live server recorded in the state file, if it answers."""
        try:
            state = json.loads(self._state.read_text())
            server = RunningServer(pid=int(state["pid"]), port=int(state["port"]))
        except (OSError, ValueError, KeyError):
            return None
        return server if _alive(server.pid) and ping(server.port) else None

    def start(self) -> tuple[RunningServer, bool]:
        """Start a server, or find the running one. Returns it and whether this call started it."""
        binary = shutil.which(self.binary)
        if binary is None:
            raise ConfigurationError(
                f"{self.binary} was not found on PATH. Install Redis (Debian/Ubuntu: sudo apt-get install "
                "redis-server), or set FRAUDSERVE_REDIS=host:port to use a Redis that is already running."
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked():
            server = self.running()
            if server is not None:
                return server, False
            port = free_port()
            log = self.directory / "redis.log"
            process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.directory),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--save",
                    "",
                    "--logfile",
                    str(log),
                    "--protected-mode",
                    "yes",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the CLI must not kill it before its clean shutdown
            )
            deadline = time.monotonic() + START_TIMEOUT_S
            while not ping(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise ConfigurationError(f"redis-server did not start on port {port}; see {log} for why.")
                time.sleep(0.02)
            server = RunningServer(pid=process.pid, port=port)
            self._state.write_text(json.dumps({"pid": server.pid, "port": server.port}))
            return server, True

    def stop(self, server: RunningServer | None = None) -> bool:
        """Shut the server down cleanly (the AOF is flushed). Returns whether one was running."""
        with self._locked():
            server = server or self.running()
            if server is None:
                return False
            with contextlib.suppress(redis.RedisError):
                _client(server.port, 5.0).shutdown(nosave=False)
            deadline = time.monotonic() + START_TIMEOUT_S
            while _alive(server.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            self._state.unlink(missing_ok=True)
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def online_store(settings_redis: str | None, directory: Path, binary: str = "redis-server") -> Iterator[str]:
    """The online store's connection string for the length of a command.

    With FRAUDSERVE_REDIS set, that Redis. Otherwise the embedded server: reused when running, else started for
    this command and stopped cleanly at its end.
    """
    if settings_redis:
        yield settings_redis
        return
    embedded = EmbeddedRedis(directory, binary)
    server, started = embedded.start()
    try:
        yield server.connection_string
    finally:
        if started:
            embedded.stop(server)
