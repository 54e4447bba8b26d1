"""Score by id on a real local Redis Cluster (three masters, tests/redis_cluster.py) as Feast's online store.

One deployment (tests/deployment.py `deploy(cluster=True)`: FRAUDSERVE_REDIS lists the three nodes,
FRAUDSERVE_REDIS_TYPE=redis_cluster, materialized by Feast's own engine). The API's reader (two pipelined round trips
on a cluster) is checked against two independent readers of the same cluster: Feast's SDK (`get_online_features`,
then the model and the explainer applied here) and an API instance reading through Feast's async SDK
(FRAUDSERVE_FEATURE_SOURCE=feast). The last test kills a master, then all: requests fail as 503
features_unavailable, never 500; and score again once the masters are restarted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import lightgbm
import numpy as np
import pytest
import redis

from core.models.attribution import LightGBMPathExplainer
from core.settings import FeatureSourceKind
from fraudserve import feature_store
from pipelines.features.catalog import load_catalog
from pipelines.online_layout import entity_key
from tests.api_server import ApiServer
from tests.deployment import Deployment, deploy

KEY_FIELDS = ("transaction_id", "card_id", "merchant_id", "device_id", "ip_address")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deploy(tmp_path_factory.mktemp("cluster"), cluster=True, appendonly=True, recent=30) as built:
        yield built


@pytest.fixture(scope="module")
def api(deployment: Deployment) -> Iterator[str]:
    with ApiServer(deployment.settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def api_feast(deployment: Deployment) -> Iterator[str]:
    """The same API reading its features through Feast's async SDK instead of its own Redis reader."""
    settings = deployment.settings.model_copy(update={"feature_source": FeatureSourceKind.feast})
    with ApiServer(settings) as server:
        yield server.url


def score(url: str, transaction_id: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/fraud/score", json={"transaction_id": transaction_id}, timeout=30)


def error_of(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return str(body["error"]["message"])


def test_the_online_store_is_spread_over_the_three_masters(deployment: Deployment) -> None:
    cluster = deployment.cluster
    sizes = cluster.dbsize()
    assert len(sizes) == 3
    total = sum(sizes.values())
    assert total > 10_000, sizes  # every entity of five views
    # CRC16 slots over three equal slot ranges: each master holds about a third.
    assert all(size > total / 5 for size in sizes.values()), sizes
    # And the keys are Feast's: a recent transaction's key is found through the cluster client, on one master only.
    client = cluster.client()
    try:
        key = entity_key(b"fraudserve", load_catalog().transaction.join_key, deployment.recent[0], 3)
        assert client.exists(key) == 1
        holders = []
        for port in cluster.ports:
            try:
                holders.append((port, cluster.node_client(port).exists(key)))
            except redis.exceptions.MovedError:  # not this master's slot
                continue
        assert len(holders) == 1 and holders[0][1] == 1, holders
    finally:
        client.close()


def test_ready_on_the_cluster(api: str) -> None:
    ready = httpx.get(f"{api}/v2/health/ready", timeout=30)
    assert ready.status_code == 200 and ready.json() == {"ready": True, "online_store": True, "model_loaded": True}


def test_score_equals_the_model_applied_to_feasts_features_from_the_cluster(deployment: Deployment, api: str) -> None:
    store = feature_store.open_store(deployment.settings, deployment.redis.connection_string)
    model = deployment.registry.get("fraud")
    path = deployment.registry.model_path("fraud", model.version)
    booster = lightgbm.Booster(model_file=str(path))
    explainer = LightGBMPathExplainer(path)
    ids = deployment.recent
    keys = store.get_online_features(
        features=[f"transaction_features:{k}" for k in KEY_FIELDS[1:]],
        entity_rows=[{"transaction_id": t} for t in ids],
    ).to_dict()
    rows = [{k: keys[k][i] for k in KEY_FIELDS} for i in range(len(ids))]
    online = store.get_online_features(features=store.get_feature_service("fraud_v2"), entity_rows=rows).to_dict()
    names = model.manifest.feature_names
    matrix = np.array([[np.nan if online[n][i] is None else online[n][i] for n in names] for i in range(len(ids))])
    assert not np.isnan(matrix).all(axis=0).any(), "a feature Feast read back from the cluster is empty for every id"
    expected = booster.predict(matrix)
    offline = explainer.contributions(matrix)
    for i, transaction_id in enumerate(ids):
        response = score(api, transaction_id)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["score"] == pytest.approx(float(expected[i]), rel=1e-9, abs=1e-12)
        assert body["model"] == {"name": "fraud", "version": model.version}
        top = np.argsort(-offline[i][:-1], kind="stable")[:3]
        assert [r["feature"] for r in body["reasons"]] == [names[j] for j in top]
        assert [r["contribution"] for r in body["reasons"]] == pytest.approx(
            [offline[i][j] for j in top], rel=1e-9, abs=1e-12
        )
        assert body["feature_freshness_seconds"] is not None and body["feature_freshness_seconds"] >= 0


def test_same_answers_as_feasts_async_sdk_on_the_cluster(deployment: Deployment, api: str, api_feast: str) -> None:
    items = [{"transaction_id": t} for t in deployment.recent]
    ours = httpx.post(f"{api}/v1/fraud/score:batch", json={"items": items}, timeout=60)
    theirs = httpx.post(f"{api_feast}/v1/fraud/score:batch", json={"items": items}, timeout=60)
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    labels = set()
    for mine, feast in zip(ours.json()["results"], theirs.json()["results"], strict=True):
        assert mine["error"] is None and feast["error"] is None, (mine, feast)
        a, b = mine["result"], feast["result"]
        assert a["transaction_id"] == b["transaction_id"]
        assert a["score"] == pytest.approx(b["score"], rel=1e-12, abs=1e-15)
        assert a["label"] == b["label"]
        assert a.get("uncertain_reasons") == b.get("uncertain_reasons")
        assert [r["feature"] for r in a["reasons"]] == [r["feature"] for r in b["reasons"]]
        assert [r["value"] for r in a["reasons"]] == [r["value"] for r in b["reasons"]]
        assert [r["contribution"] for r in a["reasons"]] == pytest.approx(
            [r["contribution"] for r in b["reasons"]], rel=1e-12, abs=1e-15
        )
        labels.add(a["label"])
    assert labels, "no results"
    # One by one over HTTP too (the batcher's single-request path), for a few ids.
    for transaction_id in deployment.recent[:5]:
        assert score(api, transaction_id).json()["score"] == score(api_feast, transaction_id).json()["score"]


def test_unknown_ids_are_not_found_on_the_cluster(deployment: Deployment, api: str) -> None:
    message = error_of(score(api, "tx_not_in_any_slot"), 404, "transaction_not_found")
    assert "tx_not_in_any_slot" in message
    items = [{"transaction_id": deployment.recent[0]}, {"transaction_id": "tx_missing"}]
    results = httpx.post(f"{api}/v1/fraud/score:batch", json={"items": items}, timeout=30).json()["results"]
    assert results[0]["result"] is not None
    assert results[1]["error"]["code"] == "transaction_not_found" and results[1]["result"] is None


def test_a_promotion_reaches_the_api_by_change_notice_on_the_cluster(deployment: Deployment) -> None:
    from tests.registry_notices import assert_promotion_arrives_by_notice

    client = deployment.cluster.client()
    try:
        assert_promotion_arrives_by_notice(deployment, client)
    finally:
        client.close()


def test_a_killed_master_is_features_unavailable_not_a_500(deployment: Deployment, api: str) -> None:
    """Last in the module: it kills a master (no replicas, so its slots stay unserved), then all, then restarts them
    (same node identities, data from their AOF): the running API scores again, without a restart of its own."""
    cluster = deployment.cluster
    before = score(api, deployment.recent[0]).json()
    client = cluster.client()
    try:
        key = entity_key(b"fraudserve", load_catalog().transaction.join_key, deployment.recent[0], 3)
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
        assert node is not None
        victim = int(node.port)
    finally:
        client.close()
    cluster.kill(victim)
    # The transaction's own key is on the dead master: a connection refused there, then the cluster marking the
    # master failed (CLUSTERDOWN on the others after the node timeout) - each is a 503, never a 500.
    for _ in range(3):
        message = error_of(score(api, deployment.recent[0]), 503, "features_unavailable")
        assert "online store" in message
    ready = httpx.get(f"{api}/v2/health/ready", timeout=30)
    assert ready.status_code == 503 and ready.json()["online_store"] is False
    assert httpx.get(f"{api}/v2/health/live", timeout=30).status_code == 200
    with pytest.raises(redis.ConnectionError):
        cluster.node_client(victim).ping()
    # Then every master: redis-py cannot load a slot map at all and raises RedisClusterException, which is not a
    # RedisError; still 503 features_unavailable, and readiness false.
    for port in cluster.ports:
        cluster.kill(port)
    for transaction_id in deployment.recent[:3]:
        message = error_of(score(api, transaction_id), 503, "features_unavailable")
        assert "online store" in message
    assert httpx.get(f"{api}/v2/health/ready", timeout=30).json()["online_store"] is False
    # An API process that starts now (a new replica, a restart) comes up: live, not ready, 503 for scores.
    with ApiServer(deployment.settings) as starting:
        assert httpx.get(f"{starting.url}/v2/health/live", timeout=30).status_code == 200
        assert httpx.get(f"{starting.url}/v2/health/ready", timeout=30).status_code == 503
        error_of(score(starting.url, deployment.recent[0]), 503, "features_unavailable")
    for port in cluster.ports:
        cluster.restart(port)  # the last one waits for cluster_state:ok everywhere
    deadline = time.monotonic() + 30
    while (response := score(api, deployment.recent[0])).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert response.status_code == 200, response.text
    after = response.json()
    assert (after["score"], after["label"], after["reasons"]) == (before["score"], before["label"], before["reasons"])
    assert httpx.get(f"{api}/v2/health/ready", timeout=30).json()["ready"] is True
