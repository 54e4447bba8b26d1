"""Batch scoring of a real Parquet file with a real registered model: same scores as the runtime, streamed in chunks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
