"""`fraudserve train --from-logs` on hand-made log and label files: deterministic, marked, and refusing too little."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from core.models.manifest import MANIFEST_FILE
from core.registry import ModelRegistry
from core.score_log import SCHEMA, write_part
from core.settings import Settings
from tests.model_packages import make_package

END = datetime(2026, 11, 30, tzinfo=UTC)
NAMES = ["amount", "card_txn_count_1h"]


def served(settings: Settings, n: int, seed: int = 3, days: int = 40) -> None:
    """`n` logged scores of model fraud over `days` days (with some shadow and duplicate rows), and their labels."""
    rng = np.random.default_rng(seed)
    fraud = rng.uniform(size=n) < 0.12
    amount = np.where(fraud, rng.gamma(4, 60, size=n), rng.gamma(2, 30, size=n))
    count = rng.poisson(np.where(fraud, 5, 1)).astype(float)
    count[rng.uniform(size=n) < 0.05] = np.nan
    times = [END - timedelta(days=days) + timedelta(days=days * i / n) for i in range(n)]
    rows = []
    for i in range(n):
        vector = [{"name": "amount", "value": float(amount[i])},
                  {"name": "card_txn_count_1h", "value": None if np.isnan(count[i]) else float(count[i])}]  # fmt: skip
        base = {"request_id": f"r{i}", "time": times[i], "transaction_id": f"t{i}", "model": "fraud", "version": 1,
                "feature_service": "svc", "score": 0.5, "label": "suspicious", "feature_freshness_seconds": 1.0,
                "features": vector}  # fmt: skip
        rows.append({**base, "role": "production"})
        if i % 7 == 0:  # the candidate's shadow score of it: not a second training row
            rows.append({**base, "role": "shadow", "version": 2})
        if i % 11 == 0:  # scored again later with other values: the first vector counts
            later = [{"name": "amount", "value": -1.0}, {"name": "card_txn_count_1h", "value": -1.0}]
            rows.append({**base, "role": "production", "time": times[i] + timedelta(hours=1), "features": later})
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    write_part(settings.score_log_dir, END.date(), table, 1)  # partitions do not matter to training
    labels = pd.DataFrame(
        {"transaction_id": [f"t{i}" for i in range(n)], "is_fraud": fraud,
         "label_timestamp": [t + timedelta(days=1) for t in times]}
    )  # fmt: skip
    settings.offline.labels_file.parent.mkdir(parents=True, exist_ok=True)
    labels.to_parquet(settings.offline.labels_file)


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FRAUDSERVE_REDIS", raising=False)
    settings = Settings()
    package = make_package(tmp_path / "pkg", [(n, "float64") for n in NAMES], feature_service="svc")
    ModelRegistry.at(settings.models_dir, None, None).register(package, name="fraud")
    return settings


def train_from_logs(out: Path, *extra: str) -> tuple[int, str]:
    from fraudserve.cli import app

    result = CliRunner().invoke(app, ["train", "--from-logs", "--model", "fraud", "--out", str(out), "--seed", "3",
                                      *extra])  # fmt: skip
    return result.exit_code, result.output


def test_a_model_from_logged_vectors_is_deterministic_and_says_where_it_came_from(
    settings: Settings, tmp_path: Path
) -> None:
    from fraudserve.log_training import logged_training_set

    served(settings, 3000)
    training_set = logged_training_set(settings, "fraud")
    frame = training_set.frame
    assert len(frame) == frame["transaction_id"].nunique()  # one row per transaction: no shadow, no re-score
    assert (frame["amount"] >= 0).all()  # the first vector of a re-scored transaction
    assert frame["card_txn_count_1h"].isna().any()  # nulls kept as missing values
    assert frame["event_timestamp"].max() <= training_set.cutoff - timedelta(days=10)  # mature rows only
    assert list(frame.columns[3:]) == NAMES and training_set.feature_service == "svc"

    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        code, output = train_from_logs(out)
        assert code == 0, output
    assert (first / "model.txt").read_bytes() == (second / "model.txt").read_bytes()
    manifest = json.loads((first / MANIFEST_FILE).read_text())
    assert manifest["params"]["training_source"] == "score_log"
    assert manifest["params"]["training_source_rows"] == len(frame)
    assert manifest["feature_service"] == "svc" and [f["name"] for f in manifest["features"]] == NAMES
    assert manifest["evaluation"]["model"]["roc_auc"] > 0.8
    assert manifest["reference"]["features"]["amount"]["rows"] == len(frame)


def test_too_few_labelled_rows_are_refused_with_a_clear_message(settings: Settings, tmp_path: Path) -> None:
    served(settings, 200)
    code, output = train_from_logs(tmp_path / "pkg-small")
    assert code == 1
    assert "too few labelled rows in the score log" in " ".join(output.split())


def test_without_any_logged_vector_it_says_so(settings: Settings, tmp_path: Path) -> None:
    code, output = train_from_logs(tmp_path / "pkg-none")
    assert code == 1 and "holds no vector of model 'fraud'" in " ".join(output.split())


def test_labels_of_the_label_stream_count_too(settings: Settings) -> None:
    """A verdict that reached only the label stream (copied under FRAUDSERVE_HOME/logs/labels) changes the training
    label of its transaction: a later chargeback on a transaction the offline labels call legitimate."""
    import pyarrow.parquet as pq

    from fraudserve.log_training import logged_training_set
    from pipelines.label_log import SCHEMA as LABEL_LOG_SCHEMA
    from pipelines.label_log import label_log_dir
    from pipelines.training.dataset import LABEL

    served(settings, 3000)
    before = logged_training_set(settings, "fraud").frame
    legit = before.loc[~before[LABEL].astype(bool), "transaction_id"].head(25).tolist()
    assert len(legit) == 25
    when = END - timedelta(days=5)
    streamed = pa.Table.from_pylist(
        [{"transaction_id": t, "is_fraud": True, "label_timestamp": when, "stream_id": f"1-{i}"}
         for i, t in enumerate(legit)],
        schema=LABEL_LOG_SCHEMA,
    )  # fmt: skip
    folder = label_log_dir(settings.home_dir)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(streamed, folder / "part-00000001.parquet")

    after = logged_training_set(settings, "fraud").frame.set_index("transaction_id")
    assert after.loc[legit, LABEL].astype(bool).all()
    others = before.loc[~before["transaction_id"].isin(legit)].set_index("transaction_id")[LABEL]
    assert (after.loc[others.index, LABEL].astype(bool) == others.astype(bool)).all()
