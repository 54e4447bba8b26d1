"""Fault injection with real processes: Redis killed and restarted under load, stream workers killed mid-stream,
models promoted (one of them corrupt on disk) and rolled back under load, and every admin route without the key.

Nothing here is mocked: a real redis-server (AOF on, restarted on the same port and data folder), the API served by
uvicorn on a real socket, stream workers as subprocesses, the registry on disk. The tests check what a client sees:
errors only while a dependency is down, each one a `features_unavailable` inside the time budget, never a wrong
score, no stream event lost or counted twice. tests/fault_summary.py collects the totals that pytest prints.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from core.keys import KeyStore, Scope
from core.settings import Settings
from fraudserve import feature_store
from pipelines.generate import GenerateConfig, generate
from pipelines.offline.backfill import backfill
from pipelines.stream.log import RedisStreamLog
from pipelines.stream.worker import STATS
from tests.api_server import ApiServer
from tests.deployment import Deployment, deploy
from tests.fault_summary import SUMMARY
from tests.integration.test_stream import cli, env_for, jsonl_lines
from tests.parity import entity_mismatches
from tests.redis_process import RedisProcess

MARGIN_S = 0.75  # client-side allowance over the request budget (HTTP, event loop, this process's own load)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Data, features, two trained packages and version 1 in production, on a Redis with AOF (it will restart)."""
    with deploy(tmp_path_factory.mktemp("faults"), appendonly=True, seed=23, recent=20) as built:
        yield built


@pytest.fixture(scope="module")
def api(world: Deployment) -> Iterator[str]:
    with ApiServer(world.settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def reference(world: Deployment, api: str) -> dict[str, float]:
    """Version 1's score of each id, read before any fault: the answer every later 200 from version 1 must give."""
    scores = {}
    for transaction_id in world.recent:
        response = httpx.post(f"{api}/v1/fraud/score", json={"transaction_id": transaction_id}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["model"]["version"] == 1
        scores[transaction_id] = float(response.json()["score"])
    return scores


# ------------------------------------------------------------------------------------------------------ load
@dataclass(frozen=True)
class Sample:
    started: float  # time.monotonic() when sent
    elapsed: float  # seconds, client-side
    status: int  # 0: no HTTP answer at all
    code: str | None  # the error code of a non-200
    transaction_id: str
    score: float | None
    version: int | None


async def steady_load(url: str, ids: list[str], stop: asyncio.Event, out: list[Sample], clients: int = 4) -> None:
    """`clients` connections scoring `ids` round-robin, back to back, until `stop` is set."""

    async def client(offset: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            i = offset
            while not stop.is_set():
                transaction_id = ids[i % len(ids)]
                i += 1
                started = time.monotonic()
                try:
                    response = await http.post("/v1/fraud/score", json={"transaction_id": transaction_id})
                except httpx.HTTPError as exc:
                    out.append(Sample(started, time.monotonic() - started, 0, type(exc).__name__, transaction_id,
                                      None, None))  # fmt: skip
                    continue
                elapsed = time.monotonic() - started
                body = response.json()
                if response.status_code == 200:
                    sample = Sample(started, elapsed, 200, None, transaction_id, float(body["score"]),
                                    int(body["model"]["version"]))  # fmt: skip
                else:
                    sample = Sample(started, elapsed, response.status_code, body["error"]["code"], transaction_id,
                                    None, None)  # fmt: skip
                out.append(sample)

    await asyncio.gather(*(client(k) for k in range(clients)))


def wrong_answers(samples: list[Sample], expected: dict[tuple[int, str], float]) -> list[Sample]:
    """200s whose score differs from the expected one of their (version, id); the first seen sets it if unknown."""
    wrong = []
    for sample in samples:
        if sample.status != 200 or sample.version is None or sample.score is None:
            continue
        key = (sample.version, sample.transaction_id)
        if expected.setdefault(key, sample.score) != sample.score:
            wrong.append(sample)
    return wrong


# ------------------------------------------------------------------------------------------- Redis down/up
@pytest.mark.timeout(360)  # includes the module's set-up (data, backfill, two trainings): ~40 s idle, more when busy
def test_redis_killed_and_restarted_under_load(world: Deployment, api: str, reference: dict[str, float]) -> None:
    """Errors only while Redis is down, each a fast `features_unavailable`; not ready meanwhile; recovery by itself."""
    budget_s = world.settings.request_budget_ms / 1000
    samples: list[Sample] = []
    marks: dict[str, float] = {}
    ready: dict[str, tuple[int, dict[str, Any]]] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load(api, world.recent, stop, samples))
        async with httpx.AsyncClient(base_url=api, timeout=5) as http:
            await asyncio.sleep(1.0)
            marks["down"] = time.monotonic()
            await asyncio.to_thread(world.redis.kill)
            await asyncio.sleep(0.5)
            response = await http.get("/v2/health/ready")
            ready["down"] = (response.status_code, response.json())
            await asyncio.sleep(1.5)
            await asyncio.to_thread(world.redis.start)  # same port, same data folder: the AOF is replayed
            marks["up"] = time.monotonic()
            deadline = marks["up"] + 10
            while True:
                response = await http.get("/v2/health/ready")
                if response.status_code == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            ready["up"] = (response.status_code, response.json())
            marks["ready"] = time.monotonic()
            await asyncio.sleep(2.0)
        stop.set()
        await load

    asyncio.run(scenario())
    SUMMARY.faults.append("Redis SIGKILLed under load, restarted 2 s later on the same port and AOF")
    SUMMARY.requests += len(samples)
    failures = [s for s in samples if s.status != 200]
    wrong = wrong_answers(samples, {(1, t): score for t, score in reference.items()})
    SUMMARY.wrong_answers += len(wrong)
    slowest = max((s.elapsed for s in failures), default=0.0)
    typical = statistics.median(s.elapsed for s in failures) if failures else 0.0
    print(f"\n{len(samples)} requests, {len(failures)} failed while Redis was down (median {typical * 1000:.0f} ms, "
          f"slowest {slowest * 1000:.0f} ms), ready again {(marks['ready'] - marks['up']) * 1000:.0f} ms after the "
          "restart")  # fmt: skip
    assert ready["down"][0] == 503 and ready["down"][1]["online_store"] is False
    assert ready["up"][0] == 200, ready["up"]
    assert wrong == []
    assert failures, "no request failed while Redis was down: the fault was not injected"
    assert {(s.status, s.code) for s in failures} == {(503, "features_unavailable")}
    assert slowest < budget_s + MARGIN_S, f"an error took {slowest:.3f} s, the budget is {budget_s} s"
    assert typical < budget_s, "a refused connection should fail fast, not wait out the budget (client retries?)"
    # Errors only while Redis was down: sent after the kill (or in flight then), answered by the restart.
    assert all(s.started >= marks["down"] - budget_s - MARGIN_S for s in failures)
    assert all(s.started <= marks["up"] for s in failures), [s for s in failures if s.started > marks["up"]][:3]
    after = [s for s in samples if s.started > marks["up"]]
    assert len(after) > 20 and all(s.status == 200 for s in after)


# --------------------------------------------------------------------------------------------------- stream
@pytest.fixture(scope="module")
def stream_offline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """An offline pipeline's output (the parity reference) and its events as JSON lines, for the stream tests."""
    root = tmp_path_factory.mktemp("faults-stream")
    home = root / "home"
    generated = generate(
        root / "raw", GenerateConfig(seed=19, cards=150, days=6, end=datetime(2026, 11, 1, tzinfo=UTC))
    )
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FRAUDSERVE_HOME", str(home))
        settings = Settings()
        feature_store.apply(settings, feature_store.OFFLINE_ONLY)
        backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
    return home, generated.files


@pytest.fixture(scope="module")
def stream_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("faults-stream-redis"), appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()


def start_worker(environment: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fraudserve", "stream", "run"], env=environment, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def processed(client: redis.Redis) -> int:
    return int(client.hget(STATS, "processed") or 0)  # type: ignore[arg-type]


@pytest.mark.timeout(240)  # includes the stream data's set-up
def test_worker_killed_and_redis_restarted_mid_stream_keep_exact_parity(
    stream_offline: tuple[Path, dict[str, Path]], stream_redis: RedisProcess, tmp_path: Path
) -> None:
    """A worker SIGKILLed mid-stream, then Redis restarted while another runs: online equals offline exactly."""
    home, files = stream_offline
    # Reads of 50 events: the kill after 300 lands mid-stream by construction (a worker's reads otherwise grow to
    # thousands under a backlog and can take the whole first part before the kill).
    environment = env_for(
        home, stream_redis, FRAUDSERVE_STREAM_CLAIM_IDLE_MS="1500", FRAUDSERVE_STREAM_READ_BATCH="50",
        FRAUDSERVE_STREAM_MAX_READ_BATCH="50",
    )  # fmt: skip
    lines = jsonl_lines(files["transactions_jsonl"])
    cuts = [0, int(len(lines) * 0.6), int(len(lines) * 0.8), len(lines)]
    parts = []
    for k in range(3):
        part = tmp_path / f"part-{k}.jsonl"
        part.write_text("\n".join(lines[cuts[k] : cuts[k + 1]]) + "\n")
        parts.append(part)
    client = stream_redis.client()

    assert cli(environment, "stream", "produce", "--file", str(parts[0])).returncode == 0
    victim = start_worker(environment)
    wait_for(lambda: processed(client) >= 300, 60, "the first worker to process 300 events")
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its process group, mid-stream
    victim.wait()
    at_kill = processed(client)
    SUMMARY.faults.append(f"stream worker SIGKILLed after {at_kill} of {cuts[1]} events")
    assert 0 < at_kill < cuts[1]

    replacement = start_worker(environment)
    try:
        assert cli(environment, "stream", "produce", "--file", str(parts[1])).returncode == 0
        stream_redis.stop()  # mid-stream, with the replacement worker running
        time.sleep(1.0)
        stream_redis.start()
        SUMMARY.faults.append("Redis restarted (AOF) mid-stream under a running worker")
        assert cli(environment, "stream", "produce", "--file", str(parts[2])).returncode == 0
        labels = cli(environment, "stream", "produce", "--file", str(files["labels_jsonl"]), "--labels")
        assert labels.returncode == 0, labels.stderr
        stream = RedisStreamLog(client)

        def drained() -> bool:
            lag = stream.lag()
            return lag["lag"] == 0 and lag["pending"] == 0

        wait_for(drained, 90, "the replacement worker to drain the stream (it must survive the Redis restart)")
        assert replacement.poll() is None, "the worker exited when Redis restarted"
    finally:
        os.killpg(replacement.pid, signal.SIGTERM)
        replacement.wait(timeout=30)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FRAUDSERVE_HOME", str(home))
        settings = Settings()
    store = feature_store.open_store(settings, stream_redis.connection_string)
    ids = [json.loads(line)["transaction_id"] for line in lines]
    found = store.get_online_features(
        features=["transaction_features:card_id"], entity_rows=[{"transaction_id": t} for t in ids]
    ).to_dict()["card_id"]
    lost = sum(1 for value in found if value is None)
    compared, mismatches = entity_mismatches(store, settings.offline, rel=1e-9)
    SUMMARY.events_lost += lost
    SUMMARY.wrong_answers += len(mismatches)
    print(f"\n{len(ids)} transactions; {lost} lost; {compared} online values compared with offline, "
          f"{len(mismatches)} differ")  # fmt: skip
    assert lost == 0
    assert mismatches[:10] == [] and compared > 1000


# ---------------------------------------------------------------------------------------------- durability
def contents(client: redis.Redis) -> dict[bytes, object]:
    """Every key's type and value (streams: entries and consumer groups), to compare before and after a restart."""
    out: dict[bytes, object] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value: object
        if kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"string":
            value = client.get(key)
        elif kind == b"list":
            value = client.lrange(key, 0, -1)
        elif kind == b"set":
            value = sorted(client.smembers(key))  # type: ignore[arg-type]
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"stream":
            # Redis does not keep a group's read counter (entries-read, lag) over an AOF replay: lag is compared
            # through RedisStreamLog.lag(), which counts the undelivered entries then.
            info: list[dict[str, Any]] = client.xinfo_groups(key)  # type: ignore[assignment]
            groups = [{k: v for k, v in g.items() if k not in ("entries-read", "lag")} for g in info]
            value = (client.xrange(key), groups, RedisStreamLog(client, key.decode()).lag() if groups else None)
        else:
            value = client.dump(key)
        out[key] = (kind, value)
    return out


@pytest.mark.timeout(120)
def test_online_features_and_stream_state_survive_a_redis_restart(
    world: Deployment, stream_redis: RedisProcess, stream_offline: tuple[Path, dict[str, Path]]
) -> None:
    """With the AOF, a restarted Redis has every materialized feature, stream entry, group and offset it had."""
    for server, what in ((world.redis, "materialized features"), (stream_redis, "stream state and features")):
        client = server.client()
        lag = 0
        if server is stream_redis:
            home, files = stream_offline
            environment = env_for(home, server)
            if not client.exists(STATS):  # the stream test did not run: stream and process events first
                assert cli(environment, "stream", "produce", "--file", str(files["transactions_jsonl"])).returncode == 0
                assert cli(environment, "stream", "run", "--until-idle", "1").returncode == 0
            RedisStreamLog(client).ensure_group()
            produced = cli(environment, "stream", "produce", "--file", str(files["labels_jsonl"]), "--labels")
            assert produced.returncode == 0, produced.stderr
            lag = RedisStreamLog(client).lag()["lag"]  # events not yet read: the group's offset must survive too
            assert lag > 0
        before = contents(client)
        assert len(before) > 100, what
        server.stop()
        server.start()
        SUMMARY.faults.append(f"Redis restarted (AOF) holding {len(before)} keys of {what}")
        after = contents(server.client())
        assert after.keys() == before.keys(), what
        assert [k for k in before if before[k] != after[k]][:5] == [], what
        if server is stream_redis:  # Redis itself reports no lag after the replay; the log counts it
            assert RedisStreamLog(server.client()).lag()["lag"] == lag


@pytest.mark.timeout(120)
def test_the_first_scores_after_a_redis_restart_while_idle_all_answer(world: Deployment, api: str) -> None:
    """Redis restarted while the API sat idle: every connection the API kept was closed by the restart without it
    seeing. The first requests after it must still answer 200 (a stale connection reconnects on the retry), not
    `features_unavailable` from a store that is up."""
    ids = world.recent[:16]

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            answers = await asyncio.gather(*(http.post("/v1/fraud/score", json={"transaction_id": t}) for t in ids))
        return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [200] * len(ids)  # several concurrent lookups: several kept connections
    world.redis.stop()
    world.redis.start()
    SUMMARY.faults.append("Redis restarted while the API was idle (its kept connections closed)")
    statuses = asyncio.run(burst())
    SUMMARY.requests += 2 * len(ids)
    assert statuses == [200] * len(ids), statuses


# -------------------------------------------------------------------------------------------------- models
@pytest.mark.timeout(120)
def test_promote_corrupt_promote_and_rollback_under_load(
    world: Deployment, api: str, reference: dict[str, float], caplog: pytest.LogCaptureFixture
) -> None:
    """No request fails because of a swap; a version changed on disk is never served, and says so everywhere."""
    samples: list[Sample] = []
    marks: dict[str, float] = {}
    observed: dict[str, Any] = {}
    registry = world.registry

    def serving(version: int, since: float) -> bool:
        return any(s.version == version and s.started > since for s in samples[-50:])

    async def until(condition: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def scenario() -> None:
        stop = asyncio.Event()
        load = asyncio.create_task(steady_load(api, world.recent, stop, samples))
        async with httpx.AsyncClient(base_url=api, timeout=5) as http:
            await asyncio.sleep(1.0)
            good = await asyncio.to_thread(registry.register, world.packages[1], name="fraud")
            await asyncio.to_thread(registry.promote, "fraud", good.version)
            marks["good"] = time.monotonic()
            observed["good_served"] = await until(lambda: serving(good.version, marks["good"]), 20)
            broken = await asyncio.to_thread(registry.register, world.packages[0], name="fraud")
            model_file = registry.model_path("fraud", broken.version)
            model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])  # truncated on disk
            await asyncio.to_thread(registry.promote, "fraud", broken.version)
            observed["broken"] = broken.version
            await asyncio.sleep(1.5)  # several polls of the registry
            observed["metrics"] = (await http.get("/metrics")).text
            observed["ready"] = (await http.get("/v2/health/ready")).json()
            observed["show"] = (await http.get("/v1/admin/models/fraud")).json()
            rolled = await asyncio.to_thread(registry.rollback, "fraud")  # production back to the good version
            observed["rollback_to"] = rolled.version
            await asyncio.sleep(0.6)
            observed["ready_after_rollback"] = (await http.get("/v2/health/ready")).json()
            await asyncio.to_thread(registry.promote, "fraud", 1)  # and one more swap under load, to version 1
            marks["back"] = time.monotonic()
            observed["back"] = await until(lambda: serving(1, marks["back"]), 20)
            await asyncio.sleep(0.5)
        stop.set()
        await load

    with caplog.at_level(logging.ERROR, logger="fraudserve.models"):
        asyncio.run(scenario())
    broken = int(observed["broken"])
    SUMMARY.faults.append(f"model version {broken} truncated on disk and promoted under load, then a rollback")
    SUMMARY.requests += len(samples)
    wrong = wrong_answers(samples, {(1, t): score for t, score in reference.items()})
    SUMMARY.wrong_answers += len(wrong)
    failures = [s for s in samples if s.status != 200]
    versions = sorted({s.version for s in samples if s.version is not None})
    print(f"\n{len(samples)} requests through 2 swaps, a broken promotion and a rollback; served {versions}")
    assert failures == []
    assert wrong == []
    assert observed["good_served"] and observed["back"]
    assert observed["rollback_to"] == broken - 1 and "model_error" not in observed["ready_after_rollback"]
    assert broken not in versions and versions == [1, broken - 1]
    # The failure is visible: metrics, readiness, the admin API, `fraudserve models show`, the logs.
    assert re.search(r'fraudserve_model_load_failures_total\{model="fraud"\} [1-9]', observed["metrics"])
    assert "checksum" in observed["ready"]["model_error"] and observed["ready"]["ready"] is True
    integrity = {v["version"]: v["integrity"] for v in observed["show"]["versions"]}
    assert "checksum" in integrity[broken] and integrity[1] == "ok"
    assert "checksum" in observed["show"]["load_error"] and observed["show"]["serving"] == broken - 1
    shown = cli(env_for(world.settings.home_dir, world.redis), "models", "show", "fraud", str(broken))
    assert shown.returncode == 0, shown.stderr
    assert "checksum" in json.loads(shown.stdout)["integrity"]
    assert any("checksum" in str(getattr(r, "error", "")) for r in caplog.records), caplog.records


# ---------------------------------------------------------------------------------------------------- auth
def operations(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every operation in the app's OpenAPI document, path parameters filled in."""
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return [(method.upper(), re.sub(r"\{[^}]+\}", "fraud", path)) for path, ops in paths.items() for method in ops]


@pytest.mark.timeout(60)
def test_every_admin_route_refuses_no_key_a_wrong_key_and_a_score_key(world: Deployment) -> None:
    """Admin routes are found, not listed: every OpenAPI operation under /v1/admin, and any other that refuses a
    key holding every scope but admin. A new admin route is then covered without editing this test."""
    settings = world.settings.model_copy(update={"metrics_public": False})  # /metrics is then admin-only too
    keys = KeyStore(settings.keys_file)
    try:
        _, score_key = keys.create("fraud-service", [Scope.score])
        _, all_but_admin = keys.create("everything-else", [s for s in Scope if s is not Scope.admin])
        _, admin_key = keys.create("ops", [Scope.admin])
        refused = 0
        with ApiServer(settings) as server:
            app = server.server.config.app
            assert isinstance(app, FastAPI)
            admin: list[tuple[str, str]] = []
            for method, path in operations(app):
                if path.startswith("/v1/admin"):
                    admin.append((method, path))
                    continue
                probe = httpx.request(method, f"{server.url}{path}", json={}, headers={"X-API-Key": all_but_admin})
                if probe.status_code == 403 and "'admin' scope" in probe.text:
                    admin.append((method, path))
            assert ("GET", "/metrics") in admin and len(admin) >= 6, admin
            for method, path in admin:
                for headers, status, code in (
                    ({}, 401, "unauthorized"),
                    ({"X-API-Key": "fs_1234_wrong"}, 401, "unauthorized"),
                    ({"Authorization": "Bearer fs_0000_nope"}, 401, "unauthorized"),
                    ({"X-API-Key": score_key}, 403, "forbidden"),
                    ({"X-API-Key": all_but_admin}, 403, "forbidden"),
                ):
                    response = httpx.request(method, f"{server.url}{path}", json={"version": 1}, headers=headers)
                    assert response.status_code == status, (method, path, headers, response.text)
                    assert response.json()["error"]["code"] == code
                    refused += 1
            ok = httpx.get(f"{server.url}/v1/admin/models", headers={"X-API-Key": admin_key})
            assert ok.status_code == 200
        SUMMARY.requests += refused + 1
        print(f"\n{len(admin)} admin routes, {refused} requests refused: {admin}")
    finally:
        settings.keys_file.unlink(missing_ok=True)
