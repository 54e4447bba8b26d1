"""The score log against real API processes, a real Redis and real files: one deployment for the module."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow.parquet as pq
import pytest

from core.score_log import log_files, read_log
from core.settings import Settings
from fraudserve import feature_store
from tests.api_server import ApiServer
from tests.deployment import SESSION_END, Deployment, deploy, serve_workers


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deploy(tmp_path_factory.mktemp("score-log")) as built:
        yield built


def settings_of(deployment: Deployment, **changes: Any) -> Settings:
    return deployment.settings.model_copy(update={"score_log_flush_seconds": 0.2, **changes})


def logged(settings: Settings, prefix: str) -> list[dict[str, Any]]:
    rows = read_log([settings.score_log_dir]).to_pylist()
    return [r for r in rows if (r["request_id"] or "").startswith(prefix)]


def test_the_logged_vector_is_what_feast_serves_for_the_transaction(deployment: Deployment) -> None:
    settings = settings_of(deployment)
    prefix = f"vec-{uuid.uuid4().hex[:8]}-"
    ids = deployment.recent[:6]
    with ApiServer(settings) as server:
        responses: dict[str, float] = {}
        for i, tid in enumerate(ids[:3]):
            body = httpx.post(
                f"{server.url}/v1/fraud/score", json={"transaction_id": tid}, headers={"X-Request-ID": f"{prefix}{i}"}
            ).json()
            responses[tid] = body["score"]
        batch = httpx.post(
            f"{server.url}/v1/fraud/score:batch",
            json={"items": [{"transaction_id": t} for t in ids[3:]] + [{"transaction_id": "tx_missing"}]},
            headers={"X-Request-ID": f"{prefix}batch"},
        ).json()
        responses.update({r["transaction_id"]: r["result"]["score"] for r in batch["results"] if r["result"]})
        predict = httpx.post(
            f"{server.url}/v1/models/fraud/predict",
            json={"rows": [{"transaction_id": ids[0]}]},
            headers={"X-Request-ID": f"{prefix}predict"},
        ).json()
        infer = httpx.post(
            f"{server.url}/v2/models/fraud/infer",
            json={"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1.0, None]}]},
            headers={"X-Request-ID": f"{prefix}infer"},
        )
    rows = logged(settings, prefix)
    by_request = {r["request_id"]: r for r in rows}
    assert len(rows) == 7  # 3 single, 3 of the batch (the missing one is an error, not a score), 1 predict
    assert infer.status_code == 422  # a tensor of the wrong width is refused and logs nothing
    assert by_request[f"{prefix}predict"]["role"] == "direct"
    assert by_request[f"{prefix}predict"]["score"] == predict["scores"][0]

    store = feature_store.open_store(deployment.settings, deployment.redis.connection_string)
    keys = ("card_id", "merchant_id", "device_id", "ip_address")
    found = store.get_online_features(
        features=[f"transaction_features:{k}" for k in keys], entity_rows=[{"transaction_id": t} for t in ids]
    ).to_dict()
    entity_rows = [{"transaction_id": t, **{k: found[k][i] for k in keys}} for i, t in enumerate(ids)]
    online = store.get_online_features(
        features=store.get_feature_service("fraud_v2"), entity_rows=entity_rows
    ).to_dict()
    names = deployment.registry.get("fraud").manifest.feature_names
    version = deployment.registry.get("fraud").version
    for row in rows:
        if row["role"] == "direct":
            continue
        i = ids.index(row["transaction_id"])
        assert row["model"] == "fraud" and row["version"] == version and row["role"] == "production"
        assert row["feature_service"] == "fraud_v2"
        assert row["score"] == responses[row["transaction_id"]]
        assert [f["name"] for f in row["features"]] == names
        for feature in row["features"]:
            expected = online[feature["name"]][i]
            if expected is None:
                assert feature["value"] is None, feature
            else:
                assert feature["value"] == pytest.approx(float(expected), rel=1e-12, abs=1e-12), feature
        assert row["feature_freshness_seconds"] is not None and row["label"]


def test_an_inline_transaction_and_oip_infer_are_logged(deployment: Deployment) -> None:
    settings = settings_of(deployment)
    prefix = f"oip-{uuid.uuid4().hex[:8]}-"
    width = len(deployment.registry.get("fraud").manifest.features)
    with ApiServer(settings) as server:
        data = [0.5] * width
        data[1] = None  # type: ignore[call-overload]
        body = {"inputs": [{"name": "features", "shape": [1, width], "datatype": "FP32", "data": data}]}
        infer = httpx.post(f"{server.url}/v2/models/fraud/infer", json=body, headers={"X-Request-ID": f"{prefix}1"})
        assert infer.status_code == 200, infer.text
    (row,) = logged(settings, prefix)
    assert row["transaction_id"] is None and row["role"] == "direct"
    assert row["score"] == pytest.approx(infer.json()["outputs"][0]["data"][0], rel=1e-6)
    assert [f["value"] for f in row["features"]] == [0.5, None] + [0.5] * (width - 2)


def test_a_full_queue_drops_and_counts_and_requests_are_unaffected(deployment: Deployment) -> None:
    settings = settings_of(deployment, score_log_queue_rows=5, score_log_flush_seconds=3600)
    prefix = f"full-{uuid.uuid4().hex[:8]}-"
    with ApiServer(settings) as server:
        statuses = [
            httpx.post(
                f"{server.url}/v1/fraud/score",
                json={"transaction_id": deployment.recent[i % 10]},
                headers={"X-Request-ID": f"{prefix}{i}"},
            ).status_code
            for i in range(20)
        ]
        metrics = httpx.get(f"{server.url}/metrics").text
    assert statuses == [200] * 20
    assert "fraudserve_score_log_dropped_total 15.0" in metrics
    assert len(logged(settings, prefix)) == 5  # written when the API stopped


async def _load(
    url: str, ids: list[str], prefix: str, seconds: float, connections: int = 12, keepalive: bool = True
) -> list[str]:
    """Score by id from `connections` clients for `seconds`; the request ids of the 200 answers. Without
    `keepalive` each request opens its own connection, so that every worker process accepts some of them."""
    answered: list[str] = []
    stop = time.monotonic() + seconds
    limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(worker: int) -> None:
            n = 0
            while time.monotonic() < stop:
                request_id = f"{prefix}{worker}-{n}"
                n += 1
                try:
                    response = await client.post(
                        "/v1/fraud/score", json={"transaction_id": ids[n % len(ids)]},
                        headers={"X-Request-ID": request_id},
                    )  # fmt: skip
                except httpx.TransportError:  # the worker serving it was killed
                    continue
                if response.status_code == 200:
                    answered.append(request_id)

        await asyncio.gather(*(one(w) for w in range(connections)))
    return answered


@pytest.mark.timeout(240)
def test_two_workers_under_load_log_every_response_once(deployment: Deployment) -> None:
    prefix = f"load-{uuid.uuid4().hex[:8]}-"
    server, url = serve_workers(deployment, 2, ready_within_s=90, FRAUDSERVE_SCORE_LOG_FLUSH_SECONDS="0.5")
    try:
        answered = asyncio.run(_load(url, deployment.recent, prefix, seconds=4, keepalive=False))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    rows = logged(deployment.settings, prefix)
    request_ids = [r["request_id"] for r in rows]
    assert len(answered) >= 50  # hundreds on an idle machine; fewer when other jobs load the cores
    assert len(request_ids) == len(set(request_ids))  # no duplicates
    assert sorted(request_ids) == sorted(answered)  # log rows = responses
    writers = {path.name.split("-")[1] for path in log_files([deployment.settings.score_log_dir])}
    assert len(writers) >= 2  # each worker process writes its own files


@pytest.mark.timeout(240)
def test_a_killed_worker_leaves_only_complete_files(deployment: Deployment) -> None:
    prefix = f"kill-{uuid.uuid4().hex[:8]}-"
    server, url = serve_workers(deployment, 2, ready_within_s=90, FRAUDSERVE_SCORE_LOG_FLUSH_SECONDS="0.05")
    try:

        async def load_and_kill() -> list[str]:
            load = asyncio.create_task(_load(url, deployment.recent, prefix, seconds=3))
            await asyncio.sleep(1.5)
            children = psutil.Process(server.pid).children(recursive=True)
            workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]  # uvicorn's workers
            os.kill(workers[-1].pid, signal.SIGKILL)  # mid-flush, as likely as not
            return await load

        answered = asyncio.run(load_and_kill())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    for path in log_files([deployment.settings.score_log_dir]):
        pq.read_table(path)  # every visible file is complete
    rows = logged(deployment.settings, prefix)
    request_ids = [r["request_id"] for r in rows]
    assert len(request_ids) == len(set(request_ids)) and set(request_ids) <= set(answered)
    assert len(rows) > 0


def test_files_under_a_temporary_name_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "day=2026-12-01").mkdir()
    (tmp_path / "day=2026-12-01" / ".part-1-2-3.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert log_files([tmp_path]) == [] and read_log([tmp_path]).num_rows == 0


def test_metrics_carry_drift_and_quality_gauges_refreshed_in_the_background(deployment: Deployment) -> None:
    settings = settings_of(deployment, monitor_refresh_seconds=0.5)
    version = deployment.registry.get("fraud").version
    with ApiServer(settings) as server:
        for tid in deployment.recent[:20]:
            assert httpx.post(f"{server.url}/v1/fraud/score", json={"transaction_id": tid}).status_code == 200
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = httpx.get(f"{server.url}/metrics").text
            if "fraudserve_score_psi{" in text:
                break
            time.sleep(0.3)
    assert f'fraudserve_score_psi{{model="fraud",version="{version}"}}' in text
    assert f'fraudserve_feature_psi{{feature="amount",model="fraud",version="{version}"}}' in text
    assert f'fraudserve_labelled_quality{{metric="labelled",model="fraud",version="{version}"}}' in text


def test_an_older_package_gets_its_drift_reference_rebuilt_from_the_offline_store(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A package without a reference (as trained before references were kept): `monitor report` rebuilds it from
    the offline store over the training window, equal to the one training kept, and keeps it for the next report
    and the API's gauges."""
    import numpy as np
    import pyarrow as pa

    from core.models.manifest import MANIFEST_FILE
    from core.models.reference import psi
    from core.score_log import SCHEMA, write_part
    from fraudserve.monitoring import report
    from pipelines.drift_reference import cache_dir, resolver

    original = deployment.registry.get("fraud")
    assert original.manifest.reference is not None
    package = tmp_path / "old-package"
    shutil.copytree(deployment.packages[0], package)
    old_manifest = original.manifest.model_copy(update={"reference": None, "name": None, "version": None})
    (package / MANIFEST_FILE).write_text(old_manifest.model_dump_json())
    old = deployment.registry.register(package, name="old-fraud", feature_service="fraud_v2")

    names = original.manifest.feature_names
    rng = np.random.default_rng(3)
    rows: list[dict[str, Any]] = []
    for i in range(300):
        values = rng.gamma(2.0, 3.0, size=len(names))
        features = [{"name": n, "value": None if i % 7 == 0 and j == 0 else float(v)}
                    for j, (n, v) in enumerate(zip(names, values, strict=True))]  # fmt: skip
        rows.append({"request_id": f"rebuild-{i}", "time": SESSION_END, "transaction_id": f"rebuild-{i}",
                     "model": "old-fraud", "version": old.version, "role": "direct", "feature_service": "fraud_v2",
                     "score": float(rng.uniform()), "label": "not_fraud", "feature_freshness_seconds": 1.0,
                     "features": features})  # fmt: skip
    root = tmp_path / "log"
    write_part(root, SESSION_END.date(), pa.Table.from_pylist(rows, schema=SCHEMA), 1)
    settings = deployment.settings
    data = report(settings, days=1, log_dirs=[root], now=SESSION_END)
    (rebuilt,) = [v["drift"] for v in data["versions"] if v["model"] == "old-fraud"]
    assert rebuilt["reference"].startswith("rebuilt from the offline store over the training window"), rebuilt
    assert "trained before packages kept a drift reference" in rebuilt["note"]

    reference = resolver(cache_dir(settings.home_dir))("old-fraud", old.version, old.manifest)[0]
    assert reference is not None  # kept: the API's gauges (no rebuild of their own) find it
    assert reference.features == original.manifest.reference.features
    assert reference.score == original.manifest.reference.score
    # The served rows' PSI against the reference training kept, computed apart, is the report's.
    kept = original.manifest.reference
    assert kept.score is not None
    served = {n: np.array([next(f["value"] for f in r["features"] if f["name"] == n) for r in rows], dtype=float)
              for n in names}  # fmt: skip
    assert {f["feature"]: f["psi"] for f in rebuilt["features"]} == pytest.approx(
        {n: psi(kept.features[n], served[n]) for n in names}, rel=1e-12
    )
    assert rebuilt["score"]["psi"] == pytest.approx(psi(kept.score, np.array([r["score"] for r in rows])), rel=1e-12)

    (kept_file,) = cache_dir(settings.home_dir).glob("old-fraud-v*.json")
    written = kept_file.stat().st_mtime_ns
    again = report(settings, days=1, log_dirs=[root], now=SESSION_END)
    assert kept_file.stat().st_mtime_ns == written  # read, not rebuilt
    (entry,) = [v for v in again["versions"] if v["model"] == "old-fraud"]
    assert entry["drift"]["features"] == rebuilt["features"] and "kept in" in entry["drift"]["note"]
    another = old.manifest.model_copy(update={"created_at": old.manifest.created_at.replace(year=2020)})
    assert resolver(cache_dir(settings.home_dir))("old-fraud", old.version, another)[0] is None  # not its manifest
