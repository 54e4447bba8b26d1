"""Batch scoring: a real Parquet file with a real registered model (same scores as the runtime, streamed in chunks),
and the API's `score:batch` on a real Redis (each item equal to its single score, one version per batch, saturation
answered with 503 overloaded and Retry-After)."""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.models.device import cuda_available
from core.models.manifest import MANIFEST_FILE, Flavor, Manifest, Thresholds
from core.models.runtime import load_runtime
from core.settings import Settings
from fraudserve import feature_store
from fraudserve.batch_scoring import BatchScorer, BatchScoringError, score_parquet
from fraudserve.cli import app
from fraudserve.registry import ModelRegistry, open_registry
from pipelines.offline.backfill import backfill
from pipelines.training.dataset import LabelPolicy, build_training_set, service_features
from tests.api_server import ApiServer
from tests.features_harness import DAY, HOUR, T0, label, txn, write_jsonl
from tests.model_packages import make_package
from tests.redis_process import RedisProcess

FEATURES = [("amount", "float64"), ("card_txn_count_1h", "int64"), ("merchant_fraud_rate_30d", "float64")]
NAMES = [n for n, _ in FEATURES]
ROWS = 5_000


def feature_rows(rows: int = ROWS, seed: int = 3) -> pd.DataFrame:
    """Transactions with the model's features in another order, some missing values, and an extra column."""
    rng = np.random.default_rng(seed)
    amount = rng.normal(scale=1.5, size=rows)
    amount[rng.random(rows) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "merchant_fraud_rate_30d": rng.normal(size=rows),
            "transaction_id": [f"tx-{i:06d}" for i in range(rows)],
            "card_txn_count_1h": pd.array(rng.integers(0, 4, rows), dtype="Int64"),
            "amount": amount,
            "country": rng.choice(["DE", "FR", "US"], rows),
        }
    )


def expected_scores(flavor: Flavor, model_file: Path, frame: pd.DataFrame) -> np.ndarray:
    """The runtime's own prediction of the same rows, as the API would build them (nulls as NaN)."""
    matrix = frame[NAMES].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    return load_runtime(flavor, model_file, threads=1).predict(matrix)


@pytest.fixture(params=[Flavor.lightgbm, Flavor.xgboost])
def registered(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ModelRegistry, Path]:
    """A registry under a FRAUDSERVE_HOME with `fraud` version 1, thresholds set so that every label occurs."""
    flavor: Flavor = request.param
    package = make_package(tmp_path / "package", FEATURES, flavor)
    manifest = Manifest.model_validate_json((package / MANIFEST_FILE).read_text())
    scores = expected_scores(flavor, package / manifest.model_file, feature_rows())
    suspicious, highly = np.quantile(scores, [0.5, 0.9])
    manifest = manifest.model_copy(
        update={"thresholds": Thresholds(suspicious=float(suspicious), highly_suspicious=float(highly))}
    )
    (package / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    home = tmp_path / "home"
    registry = ModelRegistry.at(home / "models")
    registry.register(package, name="fraud")
    source = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(feature_rows(), preserve_index=False), source, row_group_size=2_000)
    return registry, source


def test_scores_equal_the_runtime_and_labels_follow_the_thresholds(
    registered: tuple[ModelRegistry, Path], tmp_path: Path
) -> None:
    registry, source = registered
    summary = score_parquet(registry, source, tmp_path / "scores.parquet", device="cpu")
    model = registry.get("fraud")
    frame = feature_rows()
    expected = expected_scores(model.manifest.flavor, registry.model_path("fraud", 1), frame)

    scored = pq.read_table(tmp_path / "scores.parquet").to_pandas()
    assert list(scored.columns) == ["transaction_id", "country", "score", "label"]
    assert scored["transaction_id"].tolist() == frame["transaction_id"].tolist()
    assert scored["country"].tolist() == frame["country"].tolist()
    np.testing.assert_array_equal(scored["score"].to_numpy(), expected)
    thresholds = model.manifest.thresholds
    assert scored["label"].tolist() == [thresholds.label(float(s)) for s in expected]
    assert set(scored["label"]) == {"not_fraud", "suspicious", "highly_suspicious"}
    assert "uncertain" not in set(scored["label"])

    assert (summary.rows, summary.version, summary.device.used) == (ROWS, 1, "cpu")
    assert summary.labels == scored["label"].value_counts().to_dict()
    assert summary.rows_per_second > 0


def test_chunks_smaller_than_the_file_give_the_same_output(
    registered: tuple[ModelRegistry, Path], tmp_path: Path
) -> None:
    registry, source = registered
    whole = score_parquet(registry, source, tmp_path / "whole.parquet", device="cpu", chunk_rows=1_000_000)
    chunked = score_parquet(registry, source, tmp_path / "chunked.parquet", device="cpu", chunk_rows=777)
    assert (whole.chunks, chunked.chunks) == (1, -(-ROWS // 777))
    assert pq.read_table(tmp_path / "chunked.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))


def test_missing_feature_columns_are_named(registered: tuple[ModelRegistry, Path], tmp_path: Path) -> None:
    registry, _ = registered
    source = tmp_path / "partial.parquet"
    feature_rows(100).drop(columns=["amount", "merchant_fraud_rate_30d"]).to_parquet(source)
    with pytest.raises(BatchScoringError) as caught:
        score_parquet(registry, source, tmp_path / "out.parquet", device="cpu")
    message = str(caught.value)
    assert "lacks 2 of the 3 features" in message
    assert "amount" in message and "merchant_fraud_rate_30d" in message
    assert not (tmp_path / "out.parquet").exists()
    assert not list(tmp_path.glob(".out.parquet*"))


def test_no_id_column_and_text_features_are_refused(registered: tuple[ModelRegistry, Path], tmp_path: Path) -> None:
    registry, _ = registered
    source = tmp_path / "text.parquet"
    frame = feature_rows(10)
    frame.astype({"amount": str}).to_parquet(source)
    with pytest.raises(BatchScoringError, match=r"not numbers or booleans: amount \(string\)"):
        score_parquet(registry, source, tmp_path / "out.parquet", device="cpu")
    frame.to_parquet(source)
    with pytest.raises(BatchScoringError, match="no id column 'card_id'"):
        score_parquet(registry, source, tmp_path / "out.parquet", device="cpu", id_column="card_id")


def test_an_empty_file_gives_an_empty_output(registered: tuple[ModelRegistry, Path], tmp_path: Path) -> None:
    registry, _ = registered
    source = tmp_path / "empty.parquet"
    feature_rows(0).to_parquet(source)
    summary = score_parquet(registry, source, tmp_path / "out.parquet", device="cpu")
    table = pq.read_table(tmp_path / "out.parquet")
    assert (summary.rows, table.num_rows) == (0, 0)
    assert table.column_names == ["transaction_id", "country", "score", "label"]


def test_cuda_without_a_gpu_falls_back_to_the_cpu_and_says_so(
    registered: tuple[ModelRegistry, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry, source = registered
    available, why = cuda_available()
    with caplog.at_level(logging.WARNING, logger="fraudserve.batch_scoring"):
        summary = score_parquet(registry, source, tmp_path / "gpu.parquet", device="cuda")
    cpu = score_parquet(registry, source, tmp_path / "cpu.parquet", device="cpu")
    if available:  # on a GPU machine with nvForest: it ran there, to single precision
        assert summary.device.used == "cuda" and not summary.device.fell_back
        gpu_scores = pq.read_table(tmp_path / "gpu.parquet").column("score").to_numpy()
        np.testing.assert_allclose(gpu_scores, pq.read_table(tmp_path / "cpu.parquet").column("score"), atol=1e-5)
        return
    assert (summary.device.requested, summary.device.used, summary.device.reason) == ("cuda", "cpu", why)
    assert summary.device.fell_back
    assert f"device cuda requested but {why}: scoring on the CPU instead" in caplog.text
    assert pq.read_table(tmp_path / "gpu.parquet").equals(pq.read_table(tmp_path / "cpu.parquet"))
    assert cpu.device.reason is None


def test_version_and_alias_resolve_through_the_registry(registered: tuple[ModelRegistry, Path]) -> None:
    registry, _ = registered
    assert BatchScorer.open(registry, "fraud", 1, device="cpu").model.version == 1
    assert BatchScorer.open(registry, "fraud", "production", device="cpu").model.version == 1
    with pytest.raises(Exception, match="no version or alias 'candidate'"):
        BatchScorer.open(registry, "fraud", "candidate", device="cpu")


def _environment(home: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    return {**environment, "FRAUDSERVE_HOME": str(home), "COLUMNS": "200"}


@pytest.mark.timeout(120)
def test_the_cli_command_end_to_end(registered: tuple[ModelRegistry, Path], tmp_path: Path) -> None:
    registry, source = registered
    home = tmp_path / "home"  # the fixture's FRAUDSERVE_HOME: the registry is home/models
    target = tmp_path / "cli" / "scores.parquet"
    command = [sys.executable, "-m", "fraudserve", "models", "score-batch", str(source), "--output", str(target)]
    result = subprocess.run(
        [*command, "--model", "fraud", "--alias", "production", "--device", "cuda", "--chunk-rows", "1000", "--json"],
        env=_environment(home),
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["chunks"], summary["version"]) == (ROWS, 5, 1)
    if not cuda_available()[0]:
        assert summary["device"] == "cpu" and summary["device_requested"] == "cuda"
        assert "warning: device cuda requested but" in result.stderr
        assert "scoring on the CPU instead" in result.stderr
    score_parquet(registry, source, tmp_path / "library.parquet", device="cpu")
    assert pq.read_table(target).equals(pq.read_table(tmp_path / "library.parquet"))

    # The plain summary, and a clear error with exit code 1 (in process: no second interpreter start-up).
    runner = CliRunner()
    plain = runner.invoke(
        app, ["models", "score-batch", str(source), "-o", str(target), "--version", "1", "--device", "cpu"],
        env=_environment(home),
    )  # fmt: skip
    assert plain.exit_code == 0, plain.output
    assert f"scored {ROWS:,} rows with fraud version 1" in plain.output and "on cpu" in plain.output
    partial = tmp_path / "partial.parquet"
    feature_rows(10).drop(columns=["card_txn_count_1h"]).to_parquet(partial)
    refused = runner.invoke(app, ["models", "score-batch", str(partial), "-o", str(target)], env=_environment(home))
    assert refused.exit_code == 1
    assert "error:" in refused.output and "card_txn_count_1h" in refused.output


@pytest.mark.timeout(300)
def test_point_in_time_features_from_feast_score_like_the_training_set(
    tmp_path: Path, redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transaction ids in: features built by Feast as of each transaction's time, equal to the training set's."""
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FRAUDSERVE_REDIS", redis_server.connection_string)
    settings = Settings()
    feature_store.apply(settings, redis_server.connection_string)
    events = [
        txn(f"t{i}", T0 + i * 7 * HOUR, card=f"c{i % 3}", merchant=f"m{i % 2}", amount=10.0 + 13 * i) for i in range(24)
    ]
    labels = [label("t4", T0 + 40 * HOUR), label("t9", T0 + 70 * HOUR)]
    backfill(
        write_jsonl(tmp_path / "tx.jsonl", events), write_jsonl(tmp_path / "labels.jsonl", labels), settings.offline
    )
    store = feature_store.open_offline_store(settings)
    features = [(f.name, f.dtype) for f in service_features(store, "fraud_v2")]
    registry = open_registry(settings)  # registration checks the package against Feast's fraud_v2
    registry.register(make_package(tmp_path / "package", features, feature_service="fraud_v2"), name="fraud")

    requests = tmp_path / "ids.parquet"
    wanted = ["t20", "t3", "t11", "t3", "t0"]  # any order, a repeat
    pd.DataFrame({"transaction_id": wanted, "batch": ["b1"] * len(wanted)}).to_parquet(requests)
    scorer = BatchScorer.open(registry, "fraud", device="cpu")
    summary = scorer.score_transactions(store, settings.offline, requests, tmp_path / "out.parquet", chunk_rows=2)
    scored = pq.read_table(tmp_path / "out.parquet").to_pandas()
    assert (summary.rows, summary.chunks) == (5, 3)
    assert scored["transaction_id"].tolist() == wanted and set(scored["batch"]) == {"b1"}

    everything = LabelPolicy(cutoff=datetime.fromtimestamp((T0 + 30 * DAY) / 1000, UTC), maturity=timedelta(0))
    training = build_training_set(store, "fraud_v2", settings.offline, everything).frame.set_index("transaction_id")
    matrix = training.loc[wanted, [n for n, _ in features]].astype("float64").to_numpy(na_value=np.nan)
    expected = load_runtime(Flavor.lightgbm, registry.model_path("fraud", 1), threads=1).predict(matrix)
    assert np.isfinite(matrix).mean() > 0.5  # real feature values, not a row of missing ones
    np.testing.assert_array_equal(scored["score"].to_numpy(), expected)

    command = ["models", "score-batch", str(requests), "-o", str(tmp_path / "cli.parquet"), "--point-in-time"]
    result = CliRunner().invoke(app, [*command, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "cli.parquet").equals(pq.read_table(tmp_path / "out.parquet"))

    pd.DataFrame({"transaction_id": ["t1", "nope-1", "nope-2"]}).to_parquet(requests)
    with pytest.raises(BatchScoringError, match=r"2 transaction ids are not in the offline store .*: nope-1, nope-2"):
        scorer.score_transactions(store, settings.offline, requests, tmp_path / "out2.parquet")


# ------------------------------------------------------------------------------ POST /v1/fraud/score:batch (the API)
@dataclass
class Online:
    settings: Settings
    redis: RedisProcess
    registry: ModelRegistry
    package: Path
    ids: list[str]


@pytest.fixture(scope="module")
def online(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Online]:
    """A small real deployment for the batch API: Feast applied, ~300 fresh transactions (some without device or
    IP, two cards whose rows are older than the card view's TTL), backfilled and materialized into a real Redis,
    a tiny LightGBM model on fraud_v2 registered as production."""
    from fraudserve.feature_store import open_store
    from pipelines.materialize import materialize

    root = tmp_path_factory.mktemp("batch-api")
    redis = RedisProcess(root / "redis").start()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setenv("FRAUDSERVE_HOME", str(root / "home"))
            monkeypatch.setenv("FRAUDSERVE_REDIS", redis.connection_string)
            monkeypatch.setenv("FRAUDSERVE_MODEL_POLL_SECONDS", "0.2")
            settings = Settings()
            feature_store.apply(settings, redis.connection_string)
            now = int(datetime.now(UTC).timestamp() * 1000)
            events = [
                txn(f"b{i:03d}", now - (300 - i) * 30_000, card=f"c{i % 37}", merchant=f"m{i % 7}",
                    amount=5.0 + (i * 7.3) % 400, device=None if i % 5 == 0 else f"d{i % 11}",
                    ip=None if i % 7 == 0 else f"10.0.0.{i % 13}")
                for i in range(300)
            ]  # fmt: skip
            events += [txn(f"old{i}", now - 40 * DAY + i * HOUR, card=f"old-card-{i}", merchant="m1") for i in range(2)]
            labels = [label("b010", now - 60 * 60_000), label("b044", now - 30 * 60_000)]
            backfill(
                write_jsonl(root / "tx.jsonl", events), write_jsonl(root / "labels.jsonl", labels), settings.offline
            )
            store = open_store(settings, redis.connection_string)
            features = [(f.name, f.dtype) for f in service_features(store, "fraud_v2")]
            package = make_package(root / "package", features, feature_service="fraud_v2", seed=4)
            registry = open_registry(settings)
            registry.register(package, name="fraud")
            materialize(store, settings.offline)
            yield Online(settings, redis, registry, package, [e["transaction_id"] for e in events])
    finally:
        redis.stop()


def _same_as_single(item: dict[str, Any], single: httpx.Response) -> None:
    if item["error"] is not None:
        assert single.status_code == 404 and item["result"] is None
        assert item["error"] == single.json()["error"]
        return
    assert single.status_code == 200, single.text
    expected = single.json()
    for key in ("transaction_id", "score", "label", "reasons", "model", "uncertain_reasons"):
        assert item["result"][key] == expected[key], (key, item["result"][key], expected[key])


def _version_requests(http: httpx.Client) -> float:
    """The requests counted in the API's latency by answering version (what the console shows per version)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(http.get("/metrics").text):
        if family.name == "fraudserve_version_request_seconds":
            return sum(s.value for s in family.samples if s.name.endswith("_count"))
    return 0.0


def test_batch_items_equal_their_single_scores_in_request_order(online: Online) -> None:
    """Every item of a batch by id (columnar path) equals the single score of its id: score, label, reasons,
    version, uncertain reasons; unknown ids keep their own 404 error, repeats and order are kept; the same for 700
    ids (several script calls) and for a batch with an inline transaction (the record path). The bodies are the
    documented BatchResponse."""
    from inference_api.schemas import BatchResponse

    ids = [*online.ids[:-3][::-1][:240], "nope-1", online.ids[5], "old0", "old1", online.ids[5], "nope-2"]
    settings = online.settings.model_copy(update={"max_batch": 1000})
    with ApiServer(settings) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        # An in-process server's counts carry on those of the servers before it in this process (Feast's
        # PROMETHEUS_MULTIPROC_DIR): a first score makes the series exist, then only the difference counts.
        assert http.post("/v1/fraud/score", json={"transaction_id": ids[0]}).status_code == 200
        counted = _version_requests(http)
        batch = http.post("/v1/fraud/score:batch", json={"items": [{"transaction_id": t} for t in ids]})
        assert batch.status_code == 200, batch.text
        results = batch.json()["results"]
        BatchResponse.model_validate(batch.json())
        assert [r["transaction_id"] for r in results] == ids
        assert _version_requests(http) - counted == 1  # the batch, once, for the version that answered its items
        # The same ids in a body FastAPI validates (not the plain form the route reads itself): the same answer,
        # but for the features' age, which grows between the two requests.
        other = http.post("/v1/fraud/score:batch", json={"items": [{"transaction_id": t, "transaction": None}
                                                                   for t in ids]})  # fmt: skip
        assert other.status_code == 200, other.text

        def ageless(body: dict[str, Any]) -> list[Any]:
            return [{**r, "result": r["result"] and {**r["result"], "feature_freshness_seconds": None}}
                    for r in body["results"]]  # fmt: skip

        assert ageless(other.json()) == ageless(batch.json())
        labels = set()
        singles = {t: http.post("/v1/fraud/score", json={"transaction_id": t}) for t in dict.fromkeys(ids)}
        for transaction_id, item in zip(ids, results, strict=True):
            _same_as_single(item, singles[transaction_id])
            labels.add(item["result"]["label"] if item["result"] else item["error"]["code"])
        large = (ids * 3)[:700]  # more than one script call's worth of ids: pipelined chunks, still in order
        answer = http.post("/v1/fraud/score:batch", json={"items": [{"transaction_id": t} for t in large]})
        assert answer.status_code == 200, answer.text
        for transaction_id, item in zip(large, answer.json()["results"], strict=True):
            _same_as_single(item, singles[transaction_id])
        assert {"uncertain", "transaction_not_found"} < labels and len(labels) >= 3  # scored, uncertain, unknown
        old = results[ids.index("old0")]["result"]
        assert any("older than the card_features TTL" in r for r in old["uncertain_reasons"]), old

        event = {"transaction_id": "inline-1", "card_id": "c3", "merchant_id": "m2", "amount": 42.5,
                 "currency": "USD", "merchant_category": "5411", "country": "US",
                 "event_timestamp": datetime.now(UTC).isoformat()}  # fmt: skip
        mixed = [{"transaction_id": online.ids[7]}, {"transaction": event}, {"transaction_id": "nope-3"}]
        answer = http.post("/v1/fraud/score:batch", json={"items": mixed})
        assert answer.status_code == 200, answer.text
        BatchResponse.model_validate(answer.json())
        for item, request in zip(answer.json()["results"], mixed, strict=True):
            _same_as_single(item, http.post("/v1/fraud/score", json=request))


def test_the_batch_lookup_reads_what_the_lookup_script_reads(online: Online) -> None:
    """`BatchLookup` (pipelined HMGETs, no Lua) gives the lookup script's `FeatureColumns`, value for value: every
    feature and timestamp of the served plan, unknown and repeated ids, expired cards, transactions without device
    or IP, an empty batch. After Redis closed every connection (as a restart does), the next read reconnects."""
    import asyncio

    from inference_api.domain.batch_lookup import BatchLookup
    from inference_api.domain.plan import for_model, resolve_plan
    from inference_api.domain.redis_source import RedisFeatureSource

    store = feature_store.open_store(online.settings, online.redis.connection_string)
    manifest = online.registry.get("fraud").manifest
    plan = for_model(resolve_plan(store, manifest.feature_service), manifest.feature_names)
    numeric = (*plan.transaction_fields, "amount", "event_time_ms")
    ids = [*online.ids[:40], "nope-1", online.ids[0], "old0", "old1", *online.ids[200:230]]
    assert any(i % 5 == 0 for i in range(40)) and any(i % 7 == 0 for i in range(40))  # no device, no IP

    def same(script: Any, pipelined: Any, count: int) -> None:
        np.testing.assert_array_equal(pipelined.found, script.found)
        assert pipelined.numbers.keys() == script.numbers.keys() and pipelined.stamps.keys() == script.stamps.keys()
        for name, column in script.numbers.items():
            np.testing.assert_array_equal(pipelined.numbers[name], column, err_msg=name)
        for view, column in script.stamps.items():
            np.testing.assert_array_equal(pipelined.stamps[view], column, err_msg=view)
        for key in plan.entity_keys:
            np.testing.assert_array_equal(pipelined.present[key], script.present[key], err_msg=key)
            assert [pipelined.text(key, i) for i in range(count)] == [script.text(key, i) for i in range(count)]

    async def check() -> None:
        source = RedisFeatureSource(store, 2.0)
        lookup = BatchLookup(source)
        try:
            for batch in (ids, [], ["nope-2"]):
                script = await source.columns(batch, plan, numeric)
                same(script, await lookup.columns(batch, plan, numeric), len(batch))
            assert script.found.tolist() == [False]
            await asyncio.gather(*(lookup.columns(ids, plan, numeric) for _ in range(3)))  # three kept connections
            online.redis.client().client_kill_filter(_type="normal")  # all but this one
            same(await source.columns(ids, plan, numeric), await lookup.columns(ids, plan, numeric), len(ids))
        finally:
            await lookup.close()
            await source.close()

    asyncio.run(check())


def test_a_batch_is_scored_by_one_version_when_production_changes_during_it(online: Online) -> None:
    """Production is swapped while the batch's features are being read: every item is still scored by the version
    the batch started with (the columnar path and the record path), equal to that version's single scores."""
    from fastapi.testclient import TestClient

    from inference_api.app import create_app

    second = online.registry.register(online.package, name="fraud")  # candidate: same model, another version
    ids = online.ids[100:164]
    app = create_app(online.settings)
    with TestClient(app) as client:
        manager = app.state.models
        first = manager.production()
        before = {t: client.post("/v1/fraud/score", json={"transaction_id": t}).json() for t in ids}
        source, lookup = app.state.source, app.state.scoring.batch_lookup
        read_columns, read_transactions = lookup.columns, source.transactions
        swapped: list[int] = []

        def swap() -> None:
            manager.state.production = manager.load("fraud", second.version)
            swapped.append(second.version)

        async def columns(*args: Any, **kwargs: Any) -> Any:
            swap()
            return await read_columns(*args, **kwargs)

        async def transactions(*args: Any, **kwargs: Any) -> Any:
            swap()
            return await read_transactions(*args, **kwargs)

        lookup.columns, source.transactions = columns, transactions
        try:
            by_id = client.post("/v1/fraud/score:batch", json={"items": [{"transaction_id": t} for t in ids]})
            manager.state.production = first
            inline = {"transaction_id": "inline-2", "card_id": "c4", "merchant_id": "m3", "amount": 7.5,
                      "currency": "USD", "merchant_category": "5411", "country": "US",
                      "event_timestamp": datetime.now(UTC).isoformat()}  # fmt: skip
            mixed = client.post(
                "/v1/fraud/score:batch", json={"items": [{"transaction_id": ids[0]}, {"transaction": inline}]}
            )
        finally:
            lookup.columns, source.transactions = read_columns, read_transactions
            manager.state.production = first
        assert swapped == [second.version, second.version]  # production did change during each batch
        for response in (by_id, mixed):
            assert response.status_code == 200, response.text
            versions = {r["result"]["model"]["version"] for r in response.json()["results"]}
            assert versions == {first.version}, versions
        for transaction_id, item in zip(ids, by_id.json()["results"], strict=True):
            assert item["result"]["score"] == before[transaction_id]["score"]
            assert item["result"]["reasons"] == before[transaction_id]["reasons"]


def test_saturation_is_answered_200_or_overloaded_with_retry_after(online: Online) -> None:
    """16 concurrent clients sending 256-id batches to one API process on a healthy Redis: each answer is 200 or
    503 `overloaded` with Retry-After (never features_unavailable: the store is fine); some are shed, some scored.
    With Redis stopped, a batch is 503 features_unavailable: the two causes stay apart."""
    import asyncio
    import signal

    ids = online.ids
    body = {"items": [{"transaction_id": ids[(i * 7) % len(ids)]} for i in range(256)]}

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=16)) as http:

            async def client() -> list[httpx.Response]:
                return [await http.post("/v1/fraud/score:batch", json=body) for _ in range(3)]

            answers = await asyncio.gather(*(client() for _ in range(16)))
            return [a for answer in answers for a in answer]

    with ApiServer(online.settings) as server:
        responses = asyncio.run(burst(server.url))
        process = online.redis.process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        try:
            down = httpx.post(f"{server.url}/v1/fraud/score:batch", json=body, timeout=30)
        finally:
            os.kill(process.pid, signal.SIGCONT)
    codes = collections.Counter(
        "200" if r.status_code == 200 else f"{r.status_code} {r.json()['error']['code']}" for r in responses
    )
    print(f"\n16 clients x 3 batches of 256 ids: {dict(codes)}")
    assert set(codes) == {"200", "503 overloaded"}, codes
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1
            assert "FRAUDSERVE_BATCH_MAX_ITEMS_IN_FLIGHT" in response.json()["error"]["message"]
    assert down.status_code == 503 and down.json()["error"]["code"] == "features_unavailable", down.text
