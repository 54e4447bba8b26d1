"""A whole deployment for API tests: a real Redis, generated data, Feast apply, backfill, a trained and registered
model, materialized features. Shared by the API tests so that each module builds one the same way.

`deploy(..., cluster=True)` builds the same on a real local Redis Cluster (tests/redis_cluster.py, three masters)
with FRAUDSERVE_REDIS_TYPE=redis_cluster; `Deployment.redis` is then that `RedisCluster`."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
import pytest

from core.embedded_redis import free_port
from core.models.manifest import Flavor
from core.settings import Settings
from fraudserve import feature_store
from fraudserve.registry import ModelRegistry, open_registry
from pipelines.generate import GenerateConfig, generate
from pipelines.materialize import materialize
from pipelines.offline.backfill import backfill
from pipelines.training.dataset import TrainingSet, build_training_set
from pipelines.training.train import TrainConfig, train
from tests.redis_cluster import RedisCluster
from tests.redis_process import RedisProcess

# One data set per seed for the whole test session: every deployment's data ends at the same minute (the session's
# start: days before any view's TTL runs out), so a model trained for one module is the model every other module
# would train on the same seed. Training is most of a deployment's set-up time; each package is trained once per
# session and copied into each deployment's own folder (tests may tamper with their copy).
SESSION_END = datetime.now(UTC).replace(second=0, microsecond=0)
_trained: dict[tuple[int, Flavor], Path] = {}
_cache_root = Path(tempfile.mkdtemp(prefix="fraudserve-test-packages-"))
atexit.register(shutil.rmtree, _cache_root, ignore_errors=True)


def _package(training_set: TrainingSet, seed: int, flavor: Flavor, out: Path) -> Path:
    """The package trained on this seed's training set: trained on first use, then copied from the session cache."""
    key = (seed, flavor)
    if key not in _trained:
        _trained[key] = train(
            training_set, TrainConfig(flavor=flavor, seed=1), _cache_root / f"{seed}-{flavor.value}"
        ).package
    shutil.copytree(_trained[key], out)
    return out


@dataclass
class Deployment:
    settings: Settings
    redis: RedisProcess | RedisCluster  # a RedisCluster only with deploy(cluster=True)
    registry: ModelRegistry
    packages: list[Path]
    recent: list[str]  # recent transaction ids, with device and IP

    @property
    def cluster(self) -> RedisCluster:
        """The Redis Cluster of a `deploy(cluster=True)` deployment."""
        assert isinstance(self.redis, RedisCluster), "not a cluster deployment: deploy(..., cluster=True)"
        return self.redis


@contextmanager
def deploy(
    root: Path,
    flavors: tuple[Flavor, ...] = (Flavor.lightgbm, Flavor.xgboost),
    appendonly: bool = False,
    seed: int = 21,
    recent: int = 40,
    cluster: bool = False,
) -> Iterator[Deployment]:
    """Build a deployment under `root`; the first flavor's package is registered as model "fraud" (production).

    `appendonly`: Redis (or every cluster node) with AOF, for tests that restart it; `recent`: how many recent ids
    (with device and IP); `cluster`: a local three-master Redis Cluster instead of one redis-server (Feast's
    `redis_type: redis_cluster`; the fast materialize engine writes to each master)."""
    redis: RedisProcess | RedisCluster = (
        RedisCluster(root / "redis-cluster", appendonly=appendonly).start()
        if cluster
        else RedisProcess(root / "redis", appendonly).start()
    )
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setenv("FRAUDSERVE_HOME", str(root / "home"))
            monkeypatch.setenv("FRAUDSERVE_REDIS", redis.connection_string)
            monkeypatch.setenv("FRAUDSERVE_REDIS_TYPE", "redis_cluster" if cluster else "redis")
            monkeypatch.setenv("FRAUDSERVE_MODEL_POLL_SECONDS", "0.2")
            settings = Settings()
            generated = generate(root / "raw", GenerateConfig(seed=seed, cards=700, days=32, end=SESSION_END))
            feature_store.apply(settings, redis.connection_string)
            backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
            store = feature_store.open_store(settings, redis.connection_string)
            training_set = build_training_set(store, "fraud_v2", settings.offline)
            packages = [_package(training_set, seed, flavor, root / f"pkg-{flavor.value}") for flavor in flavors]
            registry = open_registry(settings)
            registry.register(packages[0], name="fraud", feature_service="fraud_v2")
            materialize(store, settings.offline)
            recent_ids = [
                str(r[0])
                for r in duckdb.connect()
                .execute(
                    f"SELECT transaction_id FROM read_parquet('{settings.offline.transactions_file}') WHERE device_id "
                    f"IS NOT NULL AND ip_address IS NOT NULL ORDER BY event_timestamp DESC LIMIT {recent}"
                )
                .fetchall()
            ]
            yield Deployment(settings, redis, registry, packages, recent_ids)
    finally:
        redis.stop()


def serve_workers(
    deployment: Deployment, workers: int, ready_within_s: float, **settings: str
) -> tuple[subprocess.Popen[bytes], str]:
    """`fraudserve serve --workers N` on the deployment, as an operator runs it, once it is ready: its own process
    with only this deployment's FRAUDSERVE_* settings (plus `settings`), its output in a log file under the home
    that a failure to become ready within `ready_within_s` quotes."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    environment.update(
        FRAUDSERVE_HOME=str(deployment.settings.home_dir), FRAUDSERVE_REDIS=deployment.redis.connection_string,
        **settings,
    )  # fmt: skip
    output = deployment.settings.home_dir / f"serve-{port}.log"
    with output.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "fraudserve", "serve", "--port", str(port), "--workers", str(workers)],
            env=environment, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_within_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(
        f"`fraudserve serve --workers {workers}` did not become ready within {ready_within_s:g} s: "
        f"{output.read_text()[-3000:]}"
    )
