"""The monitoring report on hand-made log and label files, checked against independent computations."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from core.models.manifest import MANIFEST_FILE, Manifest
from core.models.reference import FLOOR, Distribution, distribution, psi, reference_of
from core.registry import ModelRegistry
from core.score_log import SCHEMA, as_vectors, write_part
from core.settings import Settings
from fraudserve.monitoring import render_html, report
from pipelines.events import TRANSACTIONS
from tests.model_packages import make_package
from tests.redis_process import RedisProcess

NOW = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)


def hand_psi(reference: Distribution, values: list[float | None]) -> float:
    """PSI the long way: each value's bin by walking the edges, shares, then the sum."""
    bins = [0] * (len(reference.edges) + 1)
    nulls = 0
    for value in values:
        if value is None or math.isnan(value):
            nulls += 1
            continue
        bins[sum(1 for edge in reference.edges if value >= edge)] += 1
    present = len(values) - nulls
    actual = [b / len(values) for b in bins] + [nulls / len(values)]
    expected = [p * (1 - reference.null) for p in reference.proportions] + [reference.null]
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        if e == 0 and a == 0:
            continue
        e, a = max(e, FLOOR), max(a, FLOOR)  # noqa: PLW2901
        total += (a - e) * math.log(a / e)
    assert present + nulls == len(values)
    return total


def hand_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC as the share of (fraud, genuine) pairs ranked right, ties counting half."""
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_psi_of_the_reference_itself_is_zero_and_a_shift_is_large() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=5000)
    values[:500] = np.nan
    reference = distribution(values)
    assert reference.null == pytest.approx(0.1) and len(reference.proportions) == len(reference.edges) + 1
    assert psi(reference, values) == pytest.approx(0.0, abs=1e-12)
    shifted = values + 1.0
    assert psi(reference, shifted) == pytest.approx(hand_psi(reference, list(shifted)), rel=1e-12)
    assert psi(reference, shifted) > 0.2  # type: ignore[operator]
    fresh = rng.normal(size=3000)
    fresh[:300] = np.nan
    assert psi(reference, fresh) < 0.05  # type: ignore[operator]
    assert psi(reference, fresh[300:]) > 0.2  # type: ignore[operator]  # the nulls vanished: a shift too


@pytest.fixture(params=["vectors", "pairs"])
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A registry holding one version with a training reference, two days of logged scores and the labels file; the
    log in the layout the API writes now (`vectors`) or in the older one users' disks still hold (`pairs`)."""
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FRAUDSERVE_REDIS", raising=False)
    settings = Settings()
    rng = np.random.default_rng(7)
    package = make_package(tmp_path / "pkg", [("amount_z", "float64"), ("velocity", "float64")], feature_service="svc")
    train_a, train_b = rng.normal(size=4000), rng.normal(size=4000)
    train_b[:400] = np.nan
    manifest = Manifest.model_validate_json((package / MANIFEST_FILE).read_text())
    reference = reference_of({"amount_z": train_a, "velocity": train_b}, rng.uniform(size=4000), "hand-made")
    (package / MANIFEST_FILE).write_text(manifest.model_copy(update={"reference": reference}).model_dump_json())
    registry = ModelRegistry.at(settings.models_dir, None, None)
    version = registry.register(package, name="fraud", feature_service="svc").version

    n = 600
    a = rng.normal(loc=1.5, size=n)  # served amount_z shifted; velocity not
    b = rng.normal(size=n)
    b[:50] = np.nan
    fraud = rng.uniform(size=n) < 0.15
    scores = np.clip(rng.normal(0.3, 0.2, size=n) + 0.35 * fraud, 0, 1).round(3)  # ties on purpose
    labels = ["uncertain" if i % 10 == 0 else manifest.thresholds.label(s) for i, s in enumerate(scores)]
    times = [NOW - timedelta(days=1 if i < n // 2 else 0, minutes=i % 60) for i in range(n)]
    ids = [f"t{i}" for i in range(n)]
    ids[-1] = ids[-2]  # scored twice: its latest score counts once for quality
    features = [[{"name": "amount_z", "value": float(a[i])},
                 {"name": "velocity", "value": None if np.isnan(b[i]) else float(b[i])}] for i in range(n)]  # fmt: skip
    table = pa.Table.from_pydict(
        {"request_id": [f"r{i}" for i in range(n)], "time": times, "transaction_id": ids, "model": ["fraud"] * n,
         "version": [version] * n, "role": ["production"] * n, "feature_service": ["svc"] * n,
         "score": scores, "label": labels, "feature_freshness_seconds": [1.0] * n, "features": features},
        schema=SCHEMA,
    )  # fmt: skip
    for day, part in ((NOW.date() - timedelta(days=1), table.slice(0, n // 2)), (NOW.date(), table.slice(n // 2))):
        write_part(settings.score_log_dir, day, as_vectors(part) if request.param == "vectors" else part, 1)
    # Labels: two thirds known by NOW; one label of t0 arrives later (not known yet); t1 relabelled.
    known = list(range(0, n - 1, 3)) + list(range(1, n - 1, 3))
    label_rows = [{"transaction_id": f"t{i}", "is_fraud": bool(fraud[i]), "label_timestamp": NOW - timedelta(hours=1)}
                  for i in known]  # fmt: skip
    label_rows.append({"transaction_id": "t2", "is_fraud": True, "label_timestamp": NOW + timedelta(days=3)})
    later = NOW - timedelta(minutes=30)
    label_rows.append({"transaction_id": "t1", "is_fraud": not fraud[1], "label_timestamp": later})
    label_rows.append({"transaction_id": f"t{n - 2}", "is_fraud": True, "label_timestamp": later})
    settings.offline.labels_file.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(label_rows).to_parquet(settings.offline.labels_file)
    return {"settings": settings, "version": version, "scores": scores, "fraud": fraud, "known": known, "a": a,
            "b": b, "labels": labels, "reference": reference, "manifest": manifest, "n": n}  # fmt: skip


def test_report_counts_quality_and_drift_match_independent_computations(home: dict[str, Any]) -> None:
    data = report(home["settings"], days=3, now=NOW)
    json.dumps(data, allow_nan=False)  # plain JSON
    (version,) = data["versions"]
    n, scores, fraud = home["n"], home["scores"], home["fraud"].copy()
    assert version["scores"] == n and [d["scores"] for d in version["days"]] == [n // 2, n // 2]
    assert version["labels"]["uncertain"] == sum(1 for x in home["labels"] if x == "uncertain")
    assert version["uncertain_share"] == pytest.approx(version["labels"]["uncertain"] / n)

    # Quality: each transaction once (row n-1 is t{n-2} scored a minute earlier: row n-2's score counts), with
    # the labels known at NOW.
    truth = {f"t{i}": bool(fraud[i]) for i in home["known"]}
    truth["t1"] = not fraud[1]  # the later of t1's two labels
    truth[f"t{n - 2}"] = True
    latest = {f"t{i}": scores[i] for i in range(n - 1)}
    ids = sorted(truth)
    s = np.array([latest[t] for t in ids])
    y = np.array([truth[t] for t in ids])
    quality = version["quality"]
    assert quality["labelled"] == len(ids) and quality["positives"] == int(y.sum())
    assert quality["roc_auc"] == pytest.approx(hand_auc(s, y), rel=1e-12)
    for name in ("suspicious", "highly_suspicious"):
        t = getattr(home["manifest"].thresholds, name)
        flagged = s >= t
        got = quality["at_thresholds"][name]
        assert got["precision"] == pytest.approx((flagged & y).sum() / flagged.sum())
        assert got["recall"] == pytest.approx((flagged & y).sum() / y.sum())

    drift = version["drift"]
    reference = home["reference"]
    by_feature = {f["feature"]: f for f in drift["features"]}
    expected_a = hand_psi(reference.features["amount_z"], list(home["a"]))
    assert by_feature["amount_z"]["psi"] == pytest.approx(expected_a, rel=1e-9)
    assert by_feature["velocity"]["psi"] == pytest.approx(
        hand_psi(reference.features["velocity"], list(home["b"])), rel=1e-9
    )
    assert by_feature["amount_z"]["flagged"] and not by_feature["velocity"]["flagged"]
    assert drift["flagged"] == ["amount_z"] and drift["features"][0]["feature"] == "amount_z"  # worst first
    assert drift["score"]["psi"] == pytest.approx(hand_psi(reference.score, list(scores)), rel=1e-9)
    assert "<svg" in render_html(data)


def test_days_and_model_filters(home: dict[str, Any]) -> None:
    assert report(home["settings"], days=1, now=NOW)["versions"][0]["scores"] == home["n"] // 2
    assert report(home["settings"], model="other", days=3, now=NOW)["versions"] == []


def test_the_command_prints_json_and_writes_html(home: dict[str, Any], tmp_path: Path) -> None:
    from fraudserve.cli import app

    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["monitor", "report", "--days", "30", "--json", "--html", str(page)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["schema"] == "fraudserve.monitor.report/1"
    assert data["versions"][0]["scores"] == home["n"]
    assert page.read_text().startswith("<!doctype html>")
    table = CliRunner().invoke(app, ["monitor", "report", "--days", "30"])
    assert table.exit_code == 0 and "amount_z" in table.stdout and "drift" in table.stdout


def test_a_package_without_a_reference_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    settings = Settings()
    package = make_package(tmp_path / "pkg", [("x", "float64")], feature_service="svc")
    version = ModelRegistry.at(settings.models_dir, None, None).register(package, name="old").version
    row = {"request_id": "r", "time": NOW, "transaction_id": "t", "model": "old", "version": version,
           "role": "production", "feature_service": "svc", "score": 0.5, "label": "suspicious",
           "feature_freshness_seconds": None, "features": [{"name": "x", "value": 1.0}]}  # fmt: skip
    write_part(settings.score_log_dir, NOW.date(), pa.Table.from_pylist([row], schema=SCHEMA), 1)
    (version_report,) = report(settings, days=1, now=NOW)["versions"]
    assert version_report["drift"]["reference"] is None
    assert "trained before packages kept a drift reference" in version_report["drift"]["note"]
    assert version_report["quality"]["labelled"] == 0 and version_report["quality"]["roc_auc"] is None
    assert pq.read_schema(next(settings.score_log_dir.rglob("*.parquet"))) == SCHEMA


def test_the_api_gauges_follow_the_report(home: dict[str, Any]) -> None:
    from inference_api.monitoring import refresh
    from inference_api.observability import Metrics

    metrics = Metrics()
    data = refresh(home["settings"], ModelRegistry.at(home["settings"].models_dir, None, None), metrics, NOW)
    text = metrics.render().decode()
    version = data["versions"][0]
    amount = next(f for f in version["drift"]["features"] if f["feature"] == "amount_z")
    assert f'fraudserve_feature_psi{{feature="amount_z",model="fraud",version="{home["version"]}"}}' in text
    assert metrics.feature_psi.labels("fraud", str(home["version"]), "amount_z")._value.get() == amount["psi"]
    assert metrics.score_psi.labels("fraud", str(home["version"]))._value.get() == version["drift"]["score"]["psi"]
    labelled = metrics.quality.labels("fraud", str(home["version"]), "labelled")._value.get()
    assert labelled == version["quality"]["labelled"] > 0
    assert "fraudserve_labelled_quality" in text and 'metric="precision_at_suspicious"' in text


def test_labels_of_the_label_stream_count_each_copied_once(
    home: dict[str, Any], redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labels sent through the stream (a real Redis, the producer's own encoding, transactions in between) judge the
    scores as the offline file's do: new verdicts, a later verdict overriding the file's, a future one not yet."""
    from pipelines.label_log import label_log_dir
    from pipelines.monitoring import load_labels
    from pipelines.stream.producer import Producer

    monkeypatch.setenv("FRAUDSERVE_REDIS", redis_server.connection_string)
    settings = Settings()
    n, fraud, scores = home["n"], home["fraud"], home["scores"]
    before = report(settings, days=3, now=NOW)
    assert before["label_stream"]["copied"] == 0
    assert before["versions"][0]["quality"] == report(home["settings"], days=3, now=NOW)["versions"][0]["quality"]

    unlabelled = [i for i in range(2, n - 2, 3)][:60]  # no offline label
    producer = Producer(redis_server.client())
    stamp = int((NOW - timedelta(minutes=10)).timestamp() * 1000)
    sent = [{"transaction_id": f"t{i}", "is_fraud": bool(fraud[i]), "label_timestamp": stamp} for i in unlabelled]
    sent.append({"transaction_id": "t0", "is_fraud": not fraud[0], "label_timestamp": stamp})  # overrides the file
    future = f"t{next(i for i in unlabelled if not fraud[i])}"  # genuine now, fraud from 2026-12-09 on
    sent.append({"transaction_id": future, "is_fraud": True, "label_timestamp": "2026-12-09T00:00:00Z"})
    transaction = {"transaction_id": "x1", "card_id": "c", "merchant_id": "m", "device_id": None, "ip_address": None,
                   "amount": 5.0, "currency": "EUR", "merchant_category": "5411", "country": "FR",
                   "event_timestamp": stamp}  # fmt: skip
    assert Producer(redis_server.client(), transactions=TRANSACTIONS).send_transactions([transaction]).ok
    assert producer.send_labels(sent[:30]).ok
    assert Producer(redis_server.client(), transactions=TRANSACTIONS).send_transactions([transaction]).ok
    assert producer.send_labels(sent[30:]).ok
    assert producer.send_labels([{"transaction_id": "t7", "is_fraud": "yes", "label_timestamp": stamp}]).errors

    data = report(settings, days=3, now=NOW)
    assert data["label_stream"]["copied"] == len(sent)
    truth = {f"t{i}": bool(fraud[i]) for i in home["known"]}
    truth["t1"] = not fraud[1]
    truth[f"t{n - 2}"] = True
    truth |= {f"t{i}": bool(fraud[i]) for i in unlabelled}
    truth["t0"] = not fraud[0]
    ids = sorted(truth)
    s = np.array([scores[int(t[1:])] for t in ids])
    y = np.array([truth[t] for t in ids])
    quality = data["versions"][0]["quality"]
    assert data["labels_known"] == len(ids)
    assert quality["labelled"] == len(ids) and quality["positives"] == int(y.sum())
    assert quality["roc_auc"] == pytest.approx(hand_auc(s, y), rel=1e-12)

    again = report(settings, days=3, now=NOW)  # nothing new on the stream: nothing copied, the same figures
    assert again["label_stream"]["copied"] == 0 and again["versions"][0]["quality"] == quality
    copied = sorted(label_log_dir(settings.home_dir).glob("part-*.parquet"))
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in copied) == len(sent)
    later = load_labels(settings.offline.labels_file, NOW + timedelta(days=8), label_log_dir(settings.home_dir))
    assert not truth[future] and later.set_index("transaction_id")["is_fraud"][future]  # known by then


def test_label_copies_follow_every_partition_and_resume_from_the_checkpoint(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    from pipelines.label_log import read, sync
    from pipelines.stream.log import RedisStreamLog

    stream = RedisStreamLog(redis_server.client(), partitions=3)
    labels = [{"transaction_id": f"t{i}", "is_fraud": i % 4 == 0, "ts_ms": 1_764_000_000_000 + i} for i in range(50)]
    stream.append("label", labels[:20])
    stream.append("transaction", [{"transaction_id": "x", "card_id": "c", "ts_ms": 1_764_000_000_000}])
    root = tmp_path / "labels"
    assert sync(redis_server.client(), root, partitions=3) == 20
    assert sync(redis_server.client(), root, partitions=1) == 0  # one key of that name: nothing there
    stream.append("label", labels[20:])
    steps = [sync(redis_server.client(), root, partitions=3, max_entries=1) for _ in range(30)]
    assert steps[0] == 3 and all(step <= 3 for step in steps)  # one entry of each partition a step at most
    assert sum(steps) == 30 and steps[-1] == 0
    copied = read(root).sort_values("transaction_id", key=lambda s: s.str[1:].astype(int)).reset_index(drop=True)
    assert copied["transaction_id"].tolist() == [label["transaction_id"] for label in labels]
    assert copied["is_fraud"].tolist() == [label["is_fraud"] for label in labels]
    assert copied["label_timestamp"].dt.as_unit("ms").astype("int64").tolist() == [label["ts_ms"] for label in labels]


def test_a_feature_services_own_logging_folder_is_read_without_log_dir(
    home: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast import FeatureService
    from feast.feature_logging import LoggingConfig
    from feast.infra.offline_stores.file_source import FileLoggingDestination

    import fraudserve.feature_store

    own = tmp_path / "own-log"
    services = [
        FeatureService(name="svc", features=[], logging_config=LoggingConfig(FileLoggingDestination(path=str(own)))),
        FeatureService(name="plain", features=[]),
    ]

    class Registry:  # what report() asks of Feast: the registry's feature services
        def list_feature_services(self) -> list[FeatureService]:
            return services

    monkeypatch.setattr(fraudserve.feature_store, "open_offline_store", lambda settings: Registry())
    row = {"request_id": "own", "time": NOW, "transaction_id": "t-own", "model": "fraud", "version": home["version"],
           "role": "production", "feature_service": "svc", "score": 0.5, "label": "suspicious",
           "feature_freshness_seconds": None, "features": [{"name": "amount_z", "value": 1.0}]}  # fmt: skip
    write_part(own, NOW.date(), pa.Table.from_pylist([row, row], schema=SCHEMA), 1)
    assert report(home["settings"], days=3, now=NOW)["versions"][0]["scores"] == home["n"] + 2
    assert report(home["settings"], days=3, log_dirs=[own], now=NOW)["versions"][0]["scores"] == home["n"] + 2


def test_an_unreachable_label_stream_is_said_and_the_offline_labels_still_count(
    home: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.embedded_redis import free_port

    monkeypatch.setenv("FRAUDSERVE_REDIS", f"127.0.0.1:{free_port()}")  # nothing listens there
    data = report(Settings(), days=3, now=NOW)
    assert data["label_stream"]["copied"] is None and "the label stream was not read" in data["label_stream"]["note"]
    assert data["versions"][0]["quality"] == report(home["settings"], days=3, now=NOW)["versions"][0]["quality"]
