"""The CLI as a user runs it: a real process, the embedded redis-server it owns, data kept across restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.embedded_redis import EmbeddedRedis

FRAUDSERVE = [sys.executable, "-m", "fraudserve"]


def run(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    environment.update({"FRAUDSERVE_HOME": str(home), "COLUMNS": "200", **env})
    return subprocess.run(
        [*FRAUDSERVE, *args], env=environment, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    home = tmp_path_factory.mktemp("demo") / "home"
    return home, run(home, "demo", "--cards", "500", "--days", "32", "--no-serve")


@pytest.mark.timeout(300)
def test_demo_on_the_embedded_redis_then_read_back_after_a_restart(
    demo_home: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    home, demo = demo_home
    assert demo.returncode == 0, demo.stderr
    assert "registered fraud version 1 (production)" in demo.stdout
    assert "online feature vectors (read through Feast)" in demo.stdout
    assert "card_txn_count_24h" in demo.stdout and "amount_to_card_mean_7d" in demo.stdout
    # The demo started its own redis-server and stopped it cleanly: nothing left running, the AOF on disk.
    embedded = EmbeddedRedis(home / "redis")
    assert embedded.running() is None
    assert list((home / "redis").glob("appendonlydir/*.aof"))

    # A later command starts the server again from its AOF: the features are still there.
    latest = demo.stdout.split("features get ", 1)[1].splitlines()[0].split()
    assert len(latest) == 3
    again = run(home, "features", "get", *latest)
    assert again.returncode == 0, again.stderr
    for transaction_id in latest:
        assert transaction_id in again.stdout
    assert "merchant_fraud_rate_30d" in again.stdout
    assert embedded.running() is None


@pytest.mark.timeout(300)
def test_models_commands_on_the_demo_registry(demo_home: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    home, demo = demo_home
    assert demo.returncode == 0, demo.stderr
    package = sorted((home / "packages").iterdir())[-1]
    again = run(home, "models", "register", str(package), "--name", "fraud", "--feature-service", "fraud_v2")
    assert again.returncode == 0, again.stderr
    assert "registered fraud version 2 (candidate)" in again.stdout
    listing = run(home, "models", "list")
    assert "fraud" in listing.stdout and "candidate" in listing.stdout and "production" in listing.stdout
    shown = json.loads(run(home, "models", "show", "fraud", "candidate").stdout)
    assert shown["version"] == 2 and shown["manifest"]["feature_service"] == "fraud_v2"
    assert shown["manifest"]["evaluation"]["model"]["pr_auc"] > shown["manifest"]["evaluation"]["baseline"]["pr_auc"]
    assert run(home, "models", "promote", "fraud", "2").stdout.strip() == "fraud: production -> version 2"
    assert run(home, "models", "rollback", "fraud").stdout.strip() == "fraud: production -> version 1"
    wrong = run(home, "models", "register", str(package), "--name", "fraud", "--feature-service", "fraud_v1")
    assert wrong.returncode == 1
    assert "trained on feature service 'fraud_v2', not 'fraud_v1'" in wrong.stderr
    missing = run(home, "models", "show", "nope")
    assert missing.returncode == 1 and "model 'nope' is not registered (known: fraud)" in missing.stderr


@pytest.mark.timeout(300)
def test_after_a_cli_backfill_a_registration_imports_no_feast(
    demo_home: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """A backfill changes what registration learns from Feast; the backfill command (Feast open anyway) keeps the
    answers, so the next `models register`, in a fresh process, imports no Feast at all (it took most of its time)."""
    home, demo = demo_home
    assert demo.returncode == 0, demo.stderr
    data = home / "data"
    backfilled = run(
        home, "features", "backfill", "--transactions", str(data / "history_transactions.parquet"),
        "--labels", str(data / "history_labels.parquet"),
    )  # fmt: skip
    assert backfilled.returncode == 0, backfilled.stderr
    assert "registration cache refreshed for" in backfilled.stdout, backfilled.stdout
    package = sorted((home / "packages").iterdir())[-1]
    registered = run(
        home, "models", "register", str(package), "--name", "fraud", "--feature-service", "fraud_v2",
        PYTHONPROFILEIMPORTTIME="1",
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    assert "registered fraud version" in registered.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in registered.stderr.splitlines() if "import time:" in line}
    assert "typer" in imported and "feast" not in imported


def test_redis_start_env_and_stop(tmp_path: Path) -> None:
    home = tmp_path / "home"
    started = run(home, "redis", "start")
    assert started.returncode == 0, started.stderr
    try:
        server = EmbeddedRedis(home / "redis").running()
        assert server is not None
        env = run(home, "env")
        exports = dict(line.removeprefix("export ").split("=", 1) for line in env.stdout.splitlines())
        assert json.loads(exports["FRAUDSERVE_REDIS"]) == server.connection_string
        assert json.loads(exports["FRAUDSERVE_HOME"]) == str(home.resolve())
        assert "already running" in run(home, "redis", "start").stdout
    finally:
        stopped = run(home, "redis", "stop")
    assert stopped.stdout.strip() == "stopped"
    assert EmbeddedRedis(home / "redis").running() is None


def test_missing_redis_server_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    result = run(tmp_path / "home", "features", "apply", FRAUDSERVE_REDIS_SERVER_BIN="no-such-redis-server")
    assert result.returncode == 1
    assert "no-such-redis-server was not found on PATH" in result.stderr
    assert "apt-get install redis-server" in result.stderr
    assert "FRAUDSERVE_REDIS=host:port" in result.stderr


def test_backfill_of_invalid_input_fails_with_the_row_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "tx.jsonl"
    bad.write_text(
        json.dumps(
            {
                "transaction_id": "t1",
                "card_id": "c",
                "merchant_id": "m",
                "amount": -1,
                "currency": "USD",
                "merchant_category": "5411",
                "country": "US",
                "event_timestamp": "2026-11-01T00:00:00Z",
            }
        )
        + "\n"
    )
    result = run(tmp_path / "home", "features", "backfill", "--transactions", str(bad))
    assert result.returncode == 1
    assert "row 1: amount required finite number >= 0 (got -1)" in result.stderr


def test_keys_cli_and_the_loopback_rule(tmp_path: Path) -> None:
    home = tmp_path / "home"
    refused = run(home, "serve", "--host", "0.0.0.0")
    assert refused.returncode == 1 and "loopback only" in refused.stderr and "keys create" in refused.stderr
    created = run(home, "keys", "create", "--name", "fraud-service", "--scopes", "score,predict")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("fs_")
    listing = run(home, "keys", "list")
    assert "fraud-service" in listing.stdout and "predict, score" in listing.stdout
    assert key.split("_", 2)[2] not in listing.stdout
    assert key.split("_", 2)[2] not in (home / "keys" / "api_keys.json").read_text()
    bad = run(home, "keys", "create", "--name", "x", "--scopes", "root")
    assert bad.returncode == 1 and "use score, predict and/or admin" in bad.stderr
    assert run(home, "keys", "revoke", key.split("_")[1]).stdout.strip() == f"revoked {key.split('_')[1]}"


@pytest.mark.timeout(120)
def test_sigterm_stops_the_api_and_its_embedded_redis_cleanly(tmp_path: Path) -> None:
    import signal
    import time

    import httpx

    from core.embedded_redis import free_port

    home = tmp_path / "home"
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    environment["FRAUDSERVE_HOME"] = str(home)
    server = subprocess.Popen(
        [*FRAUDSERVE, "serve", "--port", str(port)], env=environment, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    embedded = EmbeddedRedis(home / "redis")
    running = embedded.running()
    assert running is not None
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    assert embedded.running() is None
    assert not (home / "redis" / "server.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(running.pid, 0)


def test_demo_refuses_fewer_days_than_its_splits_need(tmp_path: Path) -> None:
    """Every --days the demo accepts completes (22 is the least, run by hand); fewer are refused before any work."""
    done = run(tmp_path / "home", "demo", "--days", "21", "--no-serve")
    assert done.returncode == 2
    assert "Invalid value for '--days': Input should be greater than or equal to 22" in " ".join(done.stderr.split())
    assert not (tmp_path / "home").exists()
