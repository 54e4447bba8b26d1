"""`fraudserve serve`: the inference API on uvicorn."""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Annotated, Any

import typer

from core.embedded_redis import online_store
from core.errors import FraudserveError
from core.settings import Settings
from fraudserve.commands.common import console, fail, load_settings

# ---------------------------------------------------------------------------------------------------------- serve
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
) -> None:
    """The inference API on uvicorn (FastAPI)."""
    from core.keys import KeyStore

    settings = load_settings()
    if host not in LOOPBACK and not KeyStore(settings.keys_file).any():
        raise fail(
            ValueError(
                f"refusing to listen on {host}: no API key exists, so the API serves on loopback only. "
                "Create one with `fraudserve keys create --name NAME --scopes score`, or use --host 127.0.0.1"
            )
        )
    try:
        with online_store(settings.redis, settings.embedded_redis_dir, settings.redis_server_bin) as connection:
            run_api(settings, connection, host, port, workers)
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc


def run_api(settings: Settings, connection: str, host: str, port: int, workers: int) -> None:
    import uvicorn

    from inference_api.observability import configure_logging

    os.environ.update(settings.feast_environment(connection))
    if workers > 1:
        metrics_dir = settings.home_dir / "run" / f"prometheus-{os.getpid()}"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ["FRAUDSERVE_METRICS_MULTIPROCESS"] = "1"
    configure_logging()
    from core.keys import KeyStore

    keyed = KeyStore(settings.keys_file).any()
    access = "API keys required" if keyed else "no API key exists: serving on loopback only, open to local callers"
    console.print(
        f"fraudserve API on http://{host}:{port} ({workers} worker(s)), online store {connection}, "
        f"model {settings.model_name!r}; {access}. Ctrl-C stops it."
    )
    uvicorn.run(
        "inference_api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http=f"{__name__}:OneWriteHttp" if _has("httptools") else "h11",
    )


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------- one write per response
class HeldHead:
    """A connection's transport that holds a write back until the next one, or the end of the loop's turn: uvicorn
    writes a response's head and its body with two `write` calls, so two send system calls, each waking the client,
    for a score answer of a few hundred bytes; the head and the body of one response go in one send here. Anything
    that ends or hands over the connection writes what is held first."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)  # a head whose body comes later (a stream) still goes out at once
        else:
            self._held = None
            self._transport.write(held + data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.flush()
        self._transport.writelines(lines)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()
        self._transport.set_protocol(protocol)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


@functools.cache
def _one_write_http() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class OneWriteHttp(HttpToolsProtocol):
        """uvicorn's httptools protocol on a `HeldHead` transport: one send per response."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(HeldHead(transport))  # type: ignore[arg-type]

    return OneWriteHttp


def __getattr__(name: str) -> Any:
    """`OneWriteHttp`, made on first use, so that this module imports without uvicorn: uvicorn imports it by name
    in each worker (`uvicorn.run(http=...)`)."""
    if name == "OneWriteHttp":
        return _one_write_http()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
