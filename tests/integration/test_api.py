"""The inference API against a real Redis, a real Feast repo and a model trained in the test."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import lightgbm
import numpy as np
import pytest

from core.models.attribution import LightGBMPathExplainer
from core.settings import Settings
from fraudserve import feature_store
from inference_api.schemas import ScoreResponse
from tests.api_server import ApiServer
from tests.deployment import Deployment, deploy
from tests.redis_process import RedisProcess


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deploy(tmp_path_factory.mktemp("api")) as built:
        yield built


@pytest.fixture(scope="module")
def api(deployment: Deployment) -> Iterator[str]:
    with ApiServer(deployment.settings) as server:
        yield server.url


def post(url: str, body: object, **headers: str) -> httpx.Response:
    return httpx.post(url, json=body, headers=headers, timeout=30)


def test_score_equals_the_model_applied_to_feasts_own_online_features(deployment: Deployment, api: str) -> None:
    store = feature_store.open_store(deployment.settings, deployment.redis.connection_string)
    model = deployment.registry.get("fraud")
    booster = lightgbm.Booster(model_file=str(deployment.registry.model_path("fraud", model.version)))
    ids = deployment.recent[:10]
    keys = store.get_online_features(
        features=[f"transaction_features:{k}" for k in ("card_id", "merchant_id", "device_id", "ip_address")],
        entity_rows=[{"transaction_id": t} for t in ids],
    ).to_dict()
    rows = [{k: keys[k][i] for k in ("transaction_id", "card_id", "merchant_id", "device_id", "ip_address")}
            for i in range(len(ids))]  # fmt: skip
    online = store.get_online_features(features=store.get_feature_service("fraud_v2"), entity_rows=rows).to_dict()
    names = model.manifest.feature_names
    matrix = np.array([[np.nan if online[n][i] is None else online[n][i] for n in names] for i in range(len(ids))])
    expected = booster.predict(matrix)
    for transaction_id, score in zip(ids, expected, strict=True):
        response = post(f"{api}/v1/fraud/score", {"transaction_id": transaction_id})
        assert response.status_code == 200, response.text
        body = response.json()
        ScoreResponse.model_validate(body)  # the documented schema, though the route serializes it itself
        assert body["score"] == pytest.approx(float(score), rel=1e-9, abs=1e-12)
        assert body["model"] == {"name": "fraud", "version": model.version}
        assert body["label"] in {"not_fraud", "suspicious", "highly_suspicious"}
        assert body["feature_freshness_seconds"] is not None and body["feature_freshness_seconds"] >= 0
        assert len(body["reasons"]) == 3 and all(r["feature"] in names for r in body["reasons"])
        contributions = [r["contribution"] for r in body["reasons"]]
        assert contributions == sorted(contributions, reverse=True)
        # Decision-path reasons: the model's own largest contributions, as the explainer computes them offline.
        row = matrix[ids.index(transaction_id)][None, :]
        offline = LightGBMPathExplainer(deployment.registry.model_path("fraud", model.version)).contributions(row)[0]
        top = np.argsort(-offline[:-1], kind="stable")[:3]
        assert [r["feature"] for r in body["reasons"]] == [names[j] for j in top]
        assert contributions == pytest.approx([offline[j] for j in top], rel=1e-9, abs=1e-12)
        assert response.headers["x-request-id"]


def test_batch_scores_each_item_and_reports_each_error(deployment: Deployment, api: str) -> None:
    items = [
        {"transaction_id": deployment.recent[0]},
        {"transaction_id": "tx_missing"},
        {"transaction_id": deployment.recent[1]},
    ]
    response = post(f"{api}/v1/fraud/score:batch", {"items": items})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["transaction_id"] for r in results] == [i["transaction_id"] for i in items]
    assert results[0]["result"]["score"] == post(f"{api}/v1/fraud/score", items[0]).json()["score"]
    assert results[1]["error"]["code"] == "transaction_not_found" and results[1]["result"] is None
    assert results[2]["result"] is not None


def test_inline_transaction_of_an_unknown_card_is_uncertain(api: str) -> None:
    event = {"transaction_id": "inline-1", "card_id": "card_never_seen", "merchant_id": "m_00001", "amount": 12.5,
             "currency": "USD", "merchant_category": "5411", "country": "US",
             "event_timestamp": datetime.now(UTC).isoformat()}  # fmt: skip
    body = post(f"{api}/v1/fraud/score", {"transaction": event}).json()
    assert body["label"] == "uncertain"
    assert "no card features for card_id 'card_never_seen'" in body["uncertain_reasons"]
    assert 0 <= body["score"] <= 1


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


def test_spec_errors(deployment: Deployment, api: str) -> None:
    url = f"{api}/v1/fraud/score"
    assert "transaction_id" in error_of(post(url, {"transaction_id": ""}), 422, "invalid_request")
    assert "exactly one" in error_of(post(url, {}), 422, "invalid_request")
    bad = {"transaction_id": "x", "card_id": "c", "merchant_id": "m", "amount": -4, "currency": "USD",
           "merchant_category": "5411", "country": "US", "event_timestamp": "2026-11-25T00:00:00Z"}  # fmt: skip
    assert "transaction.amount" in error_of(post(url, {"transaction": bad}), 422, "invalid_request")
    no_zone = {**bad, "amount": 4, "event_timestamp": "2026-11-25T00:00:00"}
    assert "event_timestamp" in error_of(post(url, {"transaction": no_zone}), 422, "invalid_request")
    response = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    error_of(response, 422, "invalid_request")
    assert "tx_nope" in error_of(post(url, {"transaction_id": "tx_nope"}), 404, "transaction_not_found")
    message = error_of(
        post(f"{api}/v1/models/nope/predict", {"rows": [{"transaction_id": "x"}]}), 404, "model_not_found"
    )
    assert "'nope'" in message
    huge = {"items": [{"transaction_id": "x" * 60}] * 40_000}
    assert "bytes" in error_of(post(f"{url}:batch", huge), 413, "payload_too_large")
    too_many = {"items": [{"transaction_id": "t"}] * (deployment.settings.max_batch + 1)}
    assert "limit" in error_of(post(f"{url}:batch", too_many), 422, "invalid_request")
    error_of(httpx.get(f"{api}/v1/nothing/here"), 404, "not_found")


def test_features_unavailable_and_model_not_ready(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = RedisProcess(deployment.settings.home_dir / "dead")  # a free port with nothing listening
    monkeypatch.setenv("FRAUDSERVE_HOME", str(deployment.settings.home_dir))
    monkeypatch.setenv("FRAUDSERVE_REDIS", dead.connection_string)
    with ApiServer(Settings()) as server:
        message = error_of(post(f"{server.url}/v1/fraud/score", {"transaction_id": "x"}), 503, "features_unavailable")
        assert "online store" in message
        ready = httpx.get(f"{server.url}/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["online_store"] is False
    monkeypatch.setenv("FRAUDSERVE_REDIS", deployment.redis.connection_string)
    monkeypatch.setenv("FRAUDSERVE_MODEL_NAME", "unregistered")
    with ApiServer(Settings()) as server:
        message = error_of(post(f"{server.url}/v1/fraud/score", {"transaction_id": "x"}), 503, "model_not_ready")
        assert "unregistered" in message and "fraudserve models register" in message


def test_generic_predict_by_version(deployment: Deployment, api: str) -> None:
    body = post(
        f"{api}/v1/models/fraud/versions/1/predict", {"rows": [{"transaction_id": deployment.recent[0]}]}
    ).json()
    assert body["model"] == {"name": "fraud", "version": 1} and body["feature_service"] == "fraud_v2"
    assert body["scores"][0] == post(f"{api}/v1/fraud/score", {"transaction_id": deployment.recent[0]}).json()["score"]


def test_open_inference_protocol(deployment: Deployment, api: str) -> None:
    assert httpx.get(f"{api}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{api}/v2/health/ready").json()["ready"] is True
    metadata = httpx.get(f"{api}/v2/models/fraud").json()
    width = metadata["inputs"][0]["shape"][1]
    assert width == len(deployment.registry.get("fraud").manifest.features)
    assert httpx.get(f"{api}/v2/models/fraud/ready").json() == {"name": "fraud", "ready": True}
    # Shaped as in the protocol's documentation: a named tensor, shape, datatype and row-major data.
    request = {"id": "42", "inputs": [{"name": "input-0", "shape": [2, width], "datatype": "FP32",
                                       "data": [[1.0] * width, [0.0] * width]}]}  # fmt: skip
    response = post(f"{api}/v2/models/fraud/infer", request).json()
    assert response["model_name"] == "fraud" and response["id"] == "42"
    output = response["outputs"][0]
    assert output["name"] == "score" and output["shape"] == [2] and output["datatype"] == "FP32"
    booster = lightgbm.Booster(model_file=str(deployment.registry.model_path("fraud", 1)))
    predicted = np.asarray(booster.predict(np.array([[1.0] * width, [0.0] * width])))
    assert output["data"] == pytest.approx(predicted.tolist())
    flat = {"inputs": [{"name": "input-0", "shape": [1, width], "datatype": "FP32", "data": [1.0] * width}]}
    assert post(f"{api}/v2/models/fraud/versions/1/infer", flat).json()["outputs"][0]["shape"] == [1]
    wrong = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    assert "card_txn_count_10m" in error_of(post(f"{api}/v2/models/fraud/infer", wrong), 422, "invalid_request")


def test_metrics_and_request_ids(api: str) -> None:
    # An inline transaction's features are fetched apart from its lookup (the feature_fetch stage), so that this test
    # does not depend on an earlier one having scored one.
    event = {"transaction_id": "inline-metrics", "card_id": "c_metrics", "merchant_id": "m_00001", "amount": 2.0,
             "currency": "USD", "merchant_category": "5411", "country": "US",
             "event_timestamp": datetime.now(UTC).isoformat()}  # fmt: skip
    assert post(f"{api}/v1/fraud/score", {"transaction": event}).status_code == 200
    response = post(f"{api}/v1/fraud/score", {"transaction_id": "tx_nope"}, **{"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    text = httpx.get(f"{api}/metrics").text
    for stage in ("transaction_lookup", "feature_fetch", "predict", "total"):
        assert f'fraudserve_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'fraudserve_errors_total{code="transaction_not_found"}' in text
    assert "fraudserve_scores_total{label=" in text or "fraudserve_scores_total{" in text
    assert 'fraudserve_model_version{alias="production",model="fraud"}' in text


@pytest.mark.timeout(240)
def test_promotion_under_load_fails_no_request_and_switches_version(deployment: Deployment, api: str) -> None:
    ids = deployment.recent[:20]
    seen: list[tuple[int, int]] = []  # (status, model version)
    stop = asyncio.Event()

    async def client() -> None:
        async with httpx.AsyncClient(base_url=api, timeout=30) as http:
            i = 0
            while not stop.is_set():
                response = await http.post("/v1/fraud/score", json={"transaction_id": ids[i % len(ids)]})
                version = response.json().get("model", {}).get("version", -1) if response.status_code == 200 else -1
                seen.append((response.status_code, version))
                i += 1

    async def scenario() -> None:
        clients = [asyncio.create_task(client()) for _ in range(8)]
        await asyncio.sleep(1.5)
        registered = await asyncio.to_thread(
            deployment.registry.register, deployment.packages[1], name="fraud", feature_service="fraud_v2"
        )
        await asyncio.to_thread(deployment.registry.promote, "fraud", registered.version)
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            if seen and seen[-1][1] == registered.version:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)

    asyncio.run(scenario())
    statuses = {status for status, _ in seen}
    versions = [v for _, v in seen]
    print(f"\n{len(seen)} requests during the swap; statuses {statuses}; versions {sorted(set(versions))}")
    assert statuses == {200}
    assert versions[0] == 1 and versions[-1] == 2
    first_new = versions.index(2)
    assert all(v == 2 for v in versions[first_new + 8 :])  # after the swap (8 requests in flight), only v2
    assert math.isfinite(len(seen)) and len(seen) > 50
    assert json.loads(httpx.get(f"{api}/v2/models/fraud").text)["versions"] == ["1", "2"]
    deployment.registry.rollback("fraud")


def test_direct_redis_reader_returns_what_feasts_sdk_returns(deployment: Deployment) -> None:
    from inference_api.domain.features import FeastFeatureSource
    from inference_api.domain.plan import resolve_plan
    from inference_api.domain.redis_source import RedisFeatureSource

    store = feature_store.open_store(deployment.settings, deployment.redis.connection_string)
    plan = resolve_plan(store, "fraud_v2")
    ids = [*deployment.recent[:25], "tx_missing"]

    async def read(source: FeastFeatureSource | RedisFeatureSource) -> tuple[list, list]:  # type: ignore[type-arg]
        records = await source.transactions(ids)
        found = [r for r in records if r is not None]
        return records, await source.views(plan, found)

    direct = RedisFeatureSource(store, 1.0)
    ours, theirs = asyncio.run(read(direct)), asyncio.run(read(FeastFeatureSource(store, 1.0)))
    one_trip = RedisFeatureSource(store, 1.0)  # a new client: the first one's connections belong to a closed loop
    assert one_trip.fused  # a single Redis: transactions and features also come in one round trip
    fused = asyncio.run(one_trip.transactions(ids, plan))
    assert fused == ours[0]
    assert [r.views for r in fused if r is not None] == ours[1]
    assert all(r.views_plan is plan for r in fused if r is not None)
    assert ours[0][-1] is None and theirs[0][-1] is None
    assert [r.transaction_id for r in ours[0][:-1]] == ids[:-1]
    for mine, feasts in zip(ours[0][:-1], theirs[0][:-1], strict=True):
        assert mine is not None and feasts is not None
        assert {**vars(mine), "stored_at": None} == {**vars(feasts), "stored_at": None}
        assert mine.stored_at == pytest.approx(feasts.stored_at)
    assert len(ours[1]) == 25
    for mine_views, feast_views in zip(ours[1], theirs[1], strict=True):
        for view, values in mine_views.items():
            assert values.values == pytest.approx(feast_views[view].values, nan_ok=True)
            if values.timestamp is None:
                assert feast_views[view].timestamp is None
            else:
                assert values.timestamp == pytest.approx(feast_views[view].timestamp)


def test_canary_and_shadow(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """All traffic to the candidate at 100 % canary; in shadow mode the candidate scores but production answers."""
    candidate = deployment.registry.register(deployment.packages[1], name="fraud", feature_service="fraud_v2")
    assert "candidate" in candidate.aliases
    production = deployment.registry.get("fraud").version
    monkeypatch.setenv("FRAUDSERVE_HOME", str(deployment.settings.home_dir))
    monkeypatch.setenv("FRAUDSERVE_REDIS", deployment.redis.connection_string)
    body = {"transaction_id": deployment.recent[0]}
    monkeypatch.setenv("FRAUDSERVE_CANARY_PERCENT", "100")
    with ApiServer(Settings()) as server:
        versions = {post(f"{server.url}/v1/fraud/score", body).json()["model"]["version"] for _ in range(5)}
        assert versions == {candidate.version}
    monkeypatch.setenv("FRAUDSERVE_CANARY_PERCENT", "0")
    monkeypatch.setenv("FRAUDSERVE_SHADOW_CANDIDATE", "true")
    with ApiServer(Settings()) as server:
        versions = {post(f"{server.url}/v1/fraud/score", body).json()["model"]["version"] for _ in range(5)}
        assert versions == {production}
        metrics = httpx.get(f"{server.url}/metrics").text
        assert f'fraudserve_shadow_abs_difference_count{{candidate_version="{candidate.version}"}} 5.0' in metrics
        assert f'fraudserve_model_version{{alias="candidate",model="fraud"}} {float(candidate.version)}' in metrics


def test_api_keys_and_scopes(deployment: Deployment, api: str) -> None:
    """Once a key exists every route but health needs one; admin routes need the admin scope."""
    from core.keys import KeyStore, Scope

    keys = KeyStore(deployment.settings.keys_file)
    try:
        _, score_key = keys.create("fraud-service", [Scope.score])
        _, predict_key = keys.create("notebook", [Scope.predict])
        _, admin_key = keys.create("ops", [Scope.admin, Scope.score])
        assert score_key not in deployment.settings.keys_file.read_text()  # only the hash is stored
        body = {"transaction_id": deployment.recent[0]}
        score = f"{api}/v1/fraud/score"
        assert "API key is required" in error_of(post(score, body), 401, "unauthorized")
        assert "not valid" in error_of(post(score, body, Authorization="Bearer fs_0000_nope"), 401, "unauthorized")
        assert "'score' scope" in error_of(post(score, body, **{"X-API-Key": predict_key}), 403, "forbidden")
        assert post(score, body, Authorization=f"Bearer {score_key}").status_code == 200
        assert post(score, body, **{"X-API-Key": score_key}).status_code == 200
        assert httpx.get(f"{api}/v2/health/live").status_code == 200  # health stays open
        predict = f"{api}/v1/models/fraud/predict"
        assert post(predict, {"rows": [body]}, **{"X-API-Key": predict_key}).status_code == 200
        error_of(post(predict, {"rows": [body]}, **{"X-API-Key": score_key}), 403, "forbidden")
        admin_routes = [
            ("GET", "/v1/admin/models", None),
            ("GET", "/v1/admin/models/fraud", None),
            ("POST", "/v1/admin/models/fraud/promote", {"version": 1}),
            ("POST", "/v1/admin/models/fraud/rollback", None),
            ("POST", "/v1/admin/reload", None),
        ]
        for method, path, payload in admin_routes:
            for headers, status, code in (
                ({}, 401, "unauthorized"),
                ({"X-API-Key": "fs_1234_wrong"}, 401, "unauthorized"),
                ({"X-API-Key": score_key}, 403, "forbidden"),
            ):
                response = httpx.request(method, f"{api}{path}", json=payload, headers=headers)
                error_of(response, status, code)
        listing = httpx.get(f"{api}/v1/admin/models", headers={"X-API-Key": admin_key})
        assert listing.status_code == 200 and "fraud" in listing.json()["models"]
        promoted = post(f"{api}/v1/admin/models/fraud/promote", {"version": 1}, **{"X-API-Key": admin_key})
        assert promoted.status_code == 200 and "production" in promoted.json()["aliases"]
        reloaded = post(f"{api}/v1/admin/reload", None, **{"X-API-Key": admin_key}).json()
        assert reloaded["production"] == 1
    finally:
        deployment.settings.keys_file.unlink(missing_ok=True)


def test_a_transaction_produced_to_the_stream_is_scored_by_id(deployment: Deployment, api: str, tmp_path: Path) -> None:
    """End to end: produce an event, a stream worker processes it, the API scores it by id with fresh features."""
    from core.connections import redis_client
    from fraudserve.feature_store import feast_project
    from pipelines.events import TRANSACTIONS
    from pipelines.stream.producer import produce
    from pipelines.stream.worker import Worker

    store = feature_store.open_store(deployment.settings, deployment.redis.connection_string)
    card = store.get_online_features(
        features=["transaction_features:card_id"], entity_rows=[{"transaction_id": deployment.recent[0]}]
    ).to_dict()["card_id"][0]
    now = datetime.now(UTC)
    event = {"transaction_id": "tx_streamed_1", "card_id": card, "merchant_id": "m_00001", "device_id": None,
             "ip_address": None, "amount": 987.65, "currency": "USD", "merchant_category": "5732", "country": "US",
             "event_timestamp": now.isoformat().replace("+00:00", "Z")}  # fmt: skip
    events = tmp_path / "new.jsonl"
    events.write_text(json.dumps(event) + "\n")
    client = redis_client(deployment.settings, deployment.redis.connection_string)
    assert produce(client, events, TRANSACTIONS) == {"appended": 1, "dead_letter": 0}
    project = feast_project(deployment.settings)
    assert Worker(client, project, "test", timedelta(minutes=5)).run(until_idle_s=0.2) == 1

    body = post(f"{api}/v1/fraud/score", {"transaction_id": "tx_streamed_1"}).json()
    assert body["transaction_id"] == "tx_streamed_1" and 0 <= body["score"] <= 1
    assert body["label"] != "uncertain", body["uncertain_reasons"]
    assert body["feature_freshness_seconds"] < 120
    online = store.get_online_features(
        features=["card_features:card_txn_count_10m", "card_features:card_amount_max_7d"],
        entity_rows=[{"card_id": card}],
    ).to_dict()
    assert online["card_txn_count_10m"][0] >= 1 and online["card_amount_max_7d"][0] >= 987.65


def test_old_versions_are_unloaded_so_memory_does_not_grow_with_versions(deployment: Deployment) -> None:
    """Every version asked for through the generic API is loaded; only production and the 2 most recent stay."""
    for _ in range(3):
        deployment.registry.register(deployment.packages[1], name="fraud", feature_service="fraud_v2")
    versions = [m.version for m in deployment.registry.versions("fraud")]
    assert len(versions) >= 4
    row = {"rows": [{"transaction_id": deployment.recent[0]}]}
    with ApiServer(deployment.settings) as server:
        for version in versions + versions[:1]:
            response = post(f"{server.url}/v1/models/fraud/versions/{version}/predict", row)
            assert response.status_code == 200, response.text
            assert response.json()["model"]["version"] == version
        metrics = httpx.get(f"{server.url}/metrics").text
        loaded = [line for line in metrics.splitlines() if line.startswith("fraudserve_models_loaded ")]
        assert loaded and float(loaded[0].split()[1]) <= 3, loaded


def test_no_secret_reaches_a_log_line(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request logged (FRAUDSERVE_ACCESS_LOG=all), good and bad keys sent both ways: no key text in the logs."""
    import logging

    from core.keys import KeyStore, Scope
    from inference_api.observability import JsonFormatter

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(JsonFormatter().format(record))

    logger = logging.getLogger("fraudserve")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    monkeypatch.setenv("FRAUDSERVE_HOME", str(deployment.settings.home_dir))
    monkeypatch.setenv("FRAUDSERVE_REDIS", deployment.redis.connection_string)
    monkeypatch.setenv("FRAUDSERVE_ACCESS_LOG", "all")
    keys = KeyStore(deployment.settings.keys_file)
    try:
        _, score_key = keys.create("fraud-service", [Scope.score])
        _, admin_key = keys.create("ops", [Scope.admin])
        wrong = score_key[:-4] + "abcd"
        with ApiServer(Settings()) as server:
            score = f"{server.url}/v1/fraud/score"
            for headers in ({"Authorization": f"Bearer {score_key}"}, {"X-API-Key": score_key},
                            {"X-API-Key": wrong}, {"Authorization": f"Bearer {admin_key}"}):  # fmt: skip
                post(score, {"transaction_id": deployment.recent[0]}, **headers)
                post(score, {"transaction_id": "tx_missing"}, **headers)
                httpx.get(f"{server.url}/v1/admin/models", headers=headers)
        statuses = [json.loads(line).get("status") for line in lines if '"request"' in line]
        assert len(statuses) >= 12 and {200, 401, 403, 404} <= set(statuses)  # the requests were logged
        for secret in (score_key, admin_key, wrong):
            assert not any(secret in line or secret.rsplit("_", 1)[-1] in line for line in lines)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        deployment.settings.keys_file.unlink(missing_ok=True)


def test_overload_is_shed_with_503_and_retry_after(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """More concurrent requests than the batcher may hold: the excess gets 503 overloaded and Retry-After."""
    monkeypatch.setenv("FRAUDSERVE_HOME", str(deployment.settings.home_dir))
    monkeypatch.setenv("FRAUDSERVE_REDIS", deployment.redis.connection_string)
    monkeypatch.setenv("FRAUDSERVE_BATCH_MAX_WAITING", "1")
    monkeypatch.setenv("FRAUDSERVE_BATCH_MAX_SIZE", "1")
    ids = deployment.recent[:20]

    async def burst(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
            return list(await asyncio.gather(
                *(http.post("/v1/fraud/score", json={"transaction_id": ids[i % len(ids)]}) for i in range(200))
            ))  # fmt: skip

    with ApiServer(Settings()) as server:
        responses = asyncio.run(burst(server.url))
        after = post(f"{server.url}/v1/fraud/score", {"transaction_id": ids[0]})
    shed = [r for r in responses if r.status_code == 503]
    assert {r.status_code for r in responses} <= {200, 503}
    assert shed and len(shed) < len(responses)
    for response in shed:
        assert response.json()["error"]["code"] == "overloaded"
        assert int(response.headers["retry-after"]) >= 1
    assert after.status_code == 200  # nothing stuck once the burst is over


def test_a_hung_redis_costs_one_budget_not_a_hang(deployment: Deployment, api: str) -> None:
    """Redis stopped with SIGSTOP (connections accepted, nothing answered): 503 features_unavailable within the
    request budget, readiness false, and scores again as soon as it resumes, without restarting the API."""
    import os
    import signal
    import time

    assert isinstance(deployment.redis, RedisProcess)
    process = deployment.redis.process
    assert process is not None
    body = {"transaction_id": deployment.recent[0]}
    expected = post(f"{api}/v1/fraud/score", body).json()["score"]
    budget_s = deployment.settings.request_budget_ms / 1000
    os.kill(process.pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            started = time.monotonic()
            response = post(f"{api}/v1/fraud/score", body)
            elapsed = time.monotonic() - started
            error_of(response, 503, "features_unavailable")
            assert elapsed < budget_s + 0.75, f"answered after {elapsed:.2f} s with a {budget_s:.2f} s budget"
        assert httpx.get(f"{api}/v2/health/ready", timeout=10).status_code == 503
    finally:
        os.kill(process.pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while (response := post(f"{api}/v1/fraud/score", body)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert response.status_code == 200 and response.json()["score"] == expected


def test_health_and_metrics_can_require_an_admin_key(deployment: Deployment) -> None:
    from core.keys import KeyStore, Scope

    keys = KeyStore(deployment.settings.keys_file)
    try:
        _, admin_key = keys.create("ops", [Scope.admin])
        _, score_key = keys.create("fraud-service", [Scope.score])
        settings = deployment.settings.model_copy(update={"health_public": False, "metrics_public": False})
        with ApiServer(settings) as server:
            for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
                error_of(httpx.get(f"{server.url}{path}"), 401, "unauthorized")
                error_of(httpx.get(f"{server.url}{path}", headers={"X-API-Key": score_key}), 403, "forbidden")
                assert httpx.get(f"{server.url}{path}", headers={"X-API-Key": admin_key}).status_code == 200
        with ApiServer(deployment.settings) as server:  # the defaults: open, for probes and scrapers
            assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
            assert httpx.get(f"{server.url}/metrics").status_code == 200
    finally:
        deployment.settings.keys_file.unlink(missing_ok=True)


def test_a_promotion_reaches_the_api_by_change_notice(deployment: Deployment) -> None:
    from tests.registry_notices import assert_promotion_arrives_by_notice

    assert_promotion_arrives_by_notice(deployment, deployment.redis.client())


def test_a_package_registers_over_http_and_bad_archives_leave_nothing(deployment: Deployment, api: str) -> None:
    """POST /v1/admin/models/{name}/versions with a .tar.gz: the CLI's checks against the real Feast store; each
    malicious archive is refused with its message and nothing of it stays on disk or in the registry."""
    from tests.package_archives import bad_archives, good_archive

    url = f"{api}/v1/admin/models/uploaded/versions"
    headers = {"Content-Type": "application/gzip"}
    package = deployment.packages[1]  # the XGBoost package, trained on fraud_v2
    wrong = httpx.post(
        url, content=good_archive(package), params={"feature_service": "fraud_v1"}, headers=headers, timeout=60
    )
    assert "trained on feature service 'fraud_v2'" in error_of(wrong, 422, "invalid_model")
    uploads = deployment.settings.home_dir / "uploads"
    limit = deployment.settings.max_package_bytes
    for kind, (body, words) in bad_archives(package, limit).items():
        assert words in error_of(httpx.post(url, content=body, headers=headers, timeout=60), 422, "invalid_request"), (
            kind
        )
    oversized = httpx.post(url, content=bytes(limit + 1), headers=headers, timeout=60)
    assert error_of(oversized, 413, "payload_too_large")
    assert "uploaded" not in deployment.registry.names()
    assert list(uploads.iterdir()) == []

    created = httpx.post(url, content=good_archive(package, top="pkg"), headers=headers, timeout=60)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["version"], body["aliases"]) == ("uploaded", 1, ["production"])
    assert body["manifest"]["feature_service"] == "fraud_v2"
    stored = deployment.registry.get("uploaded")
    assert (
        deployment.registry.model_path("uploaded", stored.version).read_bytes()
        == (package / stored.manifest.model_file).read_bytes()
    )
    listed = httpx.get(f"{api}/v1/admin/models", timeout=30).json()["models"]
    assert listed["uploaded"] == [{"version": 1, "aliases": ["production"]}]
    assert list(uploads.iterdir()) == []


def test_the_cli_and_a_notebook_register_through_a_running_api(deployment: Deployment, api: str) -> None:
    """`models register --url` and `open_registry(url=...)` from another machine's point of view: only HTTP."""
    import subprocess
    import sys

    from fraudserve.registry import RemoteRegistry, open_registry
    from fraudserve.remote import RemoteError

    package = deployment.packages[0]
    env = {"PATH": "/usr/bin:/bin", "FRAUDSERVE_HOME": str(deployment.settings.home_dir / "elsewhere")}
    done = subprocess.run(
        [sys.executable, "-m", "fraudserve", "models", "register", str(package), "--name", "remote",
         "--feature-service", "fraud_v2", "--url", api],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "registered remote version 1 (production)" in done.stdout
    remote = open_registry(url=api)
    assert isinstance(remote, RemoteRegistry)
    second = remote.register(package, name="remote", feature_service="fraud_v2")
    assert (second["version"], second["aliases"]) == (2, ["candidate"])
    assert [v["version"] for v in remote.show("remote")["versions"]] == [1, 2]
    with pytest.raises(RemoteError) as refused:
        remote.register(package, name="remote", feature_service="fraud_v1")
    assert refused.value.status == 422 and refused.value.code == "invalid_model"
    assert "fraud_v2" in refused.value.message
    assert deployment.registry.get("remote").version == 1  # production stays; the registry is the API's own


def test_every_api_query_of_the_dashboard_and_the_alerts_names_a_metric_that_metrics_exports(api: str) -> None:
    """deploy/grafana and deploy/prometheus against this running API's /metrics (the stream's: test_observability)."""
    from tests.observability_config import exported_metrics, queried_metrics

    served = exported_metrics(httpx.get(f"{api}/metrics", timeout=30).text)
    api_queries = {
        where: names for where, names in queried_metrics().items() if not any("_stream_" in n for n in names)
    }
    assert len(api_queries) >= 10
    assert {where: names - served for where, names in api_queries.items() if names - served} == {}


def test_the_lean_score_route_answers_as_fastapis_route(deployment: Deployment, tmp_path: Path) -> None:
    """POST /v1/fraud/score through the lean route (routes/fast_score.py) and through FastAPI's route (the same app
    without it) give the same status, headers and body for scores, errors, keys and every malformed body; only
    well-formed requests take the lean path, and the OpenAPI document is the same."""
    from fastapi.testclient import TestClient

    from core.keys import KeyStore, Scope
    from inference_api.app import create_app
    from inference_api.routes.fast_score import FastScore

    lean, plain = create_app(deployment.settings), create_app(deployment.settings)
    plain.user_middleware = [m for m in plain.user_middleware if getattr(m, "cls", None) is not FastScore]
    event = {"transaction_id": "inline-lean", "card_id": "card_never_seen", "merchant_id": "m_00001", "amount": 3.5,
             "currency": "USD", "merchant_category": "5411", "country": "US",
             "event_timestamp": datetime.now(UTC).isoformat()}  # fmt: skip
    json_type = {"content-type": "application/json"}
    bodies: tuple[object, ...] = (
        {"transaction_id": deployment.recent[0]}, {"transaction_id": deployment.recent[1]},
        {"transaction_id": "tx_missing"}, {"transaction": event}, {"transaction_id": ""}, {},
        {"transaction_id": 5}, {"transaction_id": "x", "extra": 1}, {"transaction": {**event, "amount": -1}},
        {"transaction_id": "x", "transaction": event}, [], None, "tx",
    )  # fmt: skip
    requests: list[tuple[bytes, dict[str, str]]] = [
        *((json.dumps(body).encode(), json_type) for body in bodies),
        (b"{not json", json_type), (b"\xff\xfe", json_type), (b"", json_type),
        *((json.dumps({"transaction_id": deployment.recent[0]}).encode(), headers) for headers in (
            {"content-type": "text/plain"}, {}, {"content-type": "application/json; charset=utf-8"})),
    ]  # fmt: skip

    def answers(client: TestClient) -> list[tuple[int, str | None, str | None, Any]]:
        out = []
        for content, headers in requests:
            response = client.post("/v1/fraud/score", content=content, headers={**headers, **extra})
            body = response.json()
            if response.status_code == 200:  # seconds since the features' time: not the same a moment later
                body["feature_freshness_seconds"] = type(body["feature_freshness_seconds"]).__name__
            out.append((response.status_code, response.headers.get("content-type"),
                        response.headers.get("retry-after"), body))  # fmt: skip
        out.append((client.get("/v1/fraud/score").status_code, None, None, None))
        return out

    fallbacks: list[bytes] = []
    with TestClient(lean) as lean_client, TestClient(plain) as plain_client:
        stage = lean.middleware_stack
        while not isinstance(stage, FastScore):
            stage = stage.app  # type: ignore[union-attr]
        fastapi_route = stage.app

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            fallbacks.append(scope["method"].encode())
            await fastapi_route(scope, receive, send)

        stage.app = counted
        extra: dict[str, str] = {}
        assert answers(lean_client) == answers(plain_client)
        assert len(fallbacks) == len(requests) + 1 - 5  # all but the 5 well-formed JSON requests (2 ids, 1 unknown,
        # 1 inline, 1 with a charset) went to FastAPI's route; the GET too
        assert lean.openapi() == plain.openapi()
        keys = KeyStore(tmp_path / "keys.json")
        _, score_key = keys.create("fraud-service", [Scope.score])
        _, predict_key = keys.create("notebook", [Scope.predict])
        lean.state.keys = plain.state.keys = keys
        for extra in ({}, {"Authorization": "Bearer fs_0000_nope"}, {"X-API-Key": predict_key},
                      {"Authorization": f"Bearer {score_key}"}, {"X-API-Key": score_key}):  # fmt: skip
            assert answers(lean_client) == answers(plain_client), extra


def test_the_short_way_in_answers_an_unexpected_error_as_the_full_stack(deployment: Deployment) -> None:
    """`FraudserveAPI` sends `POST /v1/fraud/score` straight to `RequestContext` (app.py): an error nobody expected
    (here the batcher's) still gets the app's JSON 500 naming the request id and counts in the metrics, as through
    FastAPI's whole stack; and the short way is the one taken (the app keeps it once built)."""
    from fastapi.testclient import TestClient

    from inference_api.app import create_app

    class Broken:
        async def submit(self, request: object) -> object:
            raise RuntimeError("boom")

    app = create_app(deployment.settings)
    app.state.batcher = Broken()
    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.batcher = Broken()  # the lifespan's own, replaced
        answer = client.post("/v1/fraud/score", json={"transaction_id": "x"}, headers={"X-Request-ID": "req-500"})
        assert app._hot, "the score request did not take the short way in"
        assert answer.status_code == 500
        assert answer.json()["error"]["code"] == "internal_error" and "req-500" in answer.json()["error"]["message"]
        assert "boom" not in answer.text
        metrics = client.get("/metrics").text
    assert 'fraudserve_errors_total{code="internal_error"} 1.0' in metrics
