"""`fraudserve serve`: the inference API on uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

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
        http="httptools" if _has("httptools") else "h11",
    )


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
