"""`fraudserve redis` and `fraudserve env`: the embedded redis-server."""

from __future__ import annotations

import json

import typer

from core.embedded_redis import EmbeddedRedis
from core.errors import FraudserveError
from fraudserve.commands.common import fail, load_settings, out

app = typer.Typer(no_args_is_help=True, help="The embedded redis-server (when FRAUDSERVE_REDIS is unset).")


# ---------------------------------------------------------------------------------------------------------- redis
@app.command("start")
def redis_start() -> None:
    """Start the embedded redis-server in the background (data under FRAUDSERVE_HOME/redis, AOF on)."""
    settings = load_settings()
    try:
        server, started = EmbeddedRedis(settings.embedded_redis_dir, settings.redis_server_bin).start()
    except FraudserveError as exc:
        raise fail(exc) from exc
    out.print(f"{'started' if started else 'already running'}: redis at {server.connection_string} (pid {server.pid})")


@app.command("stop")
def redis_stop() -> None:
    """Stop the embedded redis-server cleanly (its AOF is flushed)."""
    settings = load_settings()
    stopped = EmbeddedRedis(settings.embedded_redis_dir, settings.redis_server_bin).stop()
    out.print("stopped" if stopped else "not running")


def env() -> None:
    """Print the variables that let plain `feast` commands see this run's stores: eval "$(fraudserve env)"."""
    settings = load_settings()
    connection = settings.redis
    if connection is None:
        server = EmbeddedRedis(settings.embedded_redis_dir, settings.redis_server_bin).running()
        if server is None:
            raise fail(ValueError("the embedded redis is not running; start it with `fraudserve redis start`"))
        connection = server.connection_string
    for name, value in settings.feast_environment(connection).items():
        out.print(f"export {name}={json.dumps(value)}", highlight=False)
