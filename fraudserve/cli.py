"""The `fraudserve` command line: one thin layer over the pipelines, with progress and plain error messages."""

from __future__ import annotations

import signal
import warnings

import typer

from fraudserve.commands import data, demo, features, keys, models, monitor, redis, scoring, serve, stream, training

app = typer.Typer(no_args_is_help=True, help="Payments fraud scoring on Feast and Redis.")
app.add_typer(data.app, name="data")
app.add_typer(features.app, name="features")
models.app.command("score-batch")(scoring.score_batch)
app.add_typer(models.app, name="models")
app.add_typer(stream.app, name="stream")
app.add_typer(keys.app, name="keys")
app.add_typer(redis.app, name="redis")
app.add_typer(monitor.app, name="monitor")
app.command("train")(training.train_command)
app.command("serve")(serve.serve)
app.command("env")(redis.env)
app.command("demo")(demo.demo)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@app.callback()
def _main() -> None:
    # Feast's DuckDB store (through ibis) warns about deprecated DuckDB calls on every query: noise for a CLI user.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # SIGTERM (docker stop, systemd, kill) unwinds like Ctrl-C, so an embedded redis-server is shut down cleanly.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
