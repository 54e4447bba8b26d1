"""The console's traffic figures: differences of the app's own counters between snapshots, per version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from inference_api.console.traffic import Histogram, Snapshot, TrafficWindow, compare, take
from inference_api.middleware import RequestContext
from inference_api.observability import MULTIPROCESS_FLAG, Metrics
from inference_api.schemas import ModelRef


def test_quantile_interpolates_within_the_bucket_as_prometheus_does() -> None:
    window = Histogram(((0.001, 0.0), (0.002, 5.0), (0.005, 10.0), (float("inf"), 10.0)), 10.0, 0.03)
    assert window.quantile(0.5) == pytest.approx(0.002)  # rank 5: the top of the (1, 2] ms bucket
    assert window.quantile(0.99) == pytest.approx(0.002 + 0.003 * 4.9 / 5)
    assert Histogram((), 0.0, 0.0).quantile(0.5) is None
    beyond = Histogram(((0.001, 1.0), (float("inf"), 10.0)), 10.0, 1.0)
    assert beyond.quantile(0.99) == 0.001  # past the last finite bound: that bound, as histogram_quantile says


def test_histogram_difference_and_restart() -> None:
    before = Histogram(((0.01, 4.0), (float("inf"), 5.0)), 5.0, 0.1)
    after = Histogram(((0.01, 10.0), (float("inf"), 12.0)), 12.0, 0.3)
    assert after.minus(before) == Histogram(((0.01, 6.0), (float("inf"), 7.0)), 7.0, pytest.approx(0.2))
    restarted = Histogram(((0.01, 1.0), (float("inf"), 1.0)), 1.0, 0.005)
    assert restarted.minus(before) is restarted  # a counter that went down started again: all of it is new


def test_rates_percentiles_and_label_mix_per_version_from_metrics() -> None:
    metrics = Metrics()
    # Every series the test counts exists before the first look: with PROMETHEUS_MULTIPROC_DIR set (Feast sets it
    # on import) a series starts from what earlier apps of this process counted in it, as a restarted counter would.
    for label in ("not_fraud", "suspicious"):
        metrics.scored("fraud", 1, label)
    metrics.scored("fraud", 2, "highly_suspicious")
    metrics.answered("fraud", 1, 0.004)
    metrics.answered("fraud", 2, 0.004)
    metrics.error("transaction_not_found")
    metrics.request("/v1/fraud/score", 200)
    earlier = take(metrics, at=100.0)
    for i in range(30):  # production: 30 scores in 10 s, 3 ms each; 3 of them suspicious
        metrics.scored("fraud", 1, "suspicious" if i % 10 == 0 else "not_fraud")
        metrics.answered("fraud", 1, 0.003)
    for _ in range(10):  # canary: 10 scores, 20 ms each
        metrics.scored("fraud", 2, "highly_suspicious")
        metrics.answered("fraud", 2, 0.02)
    metrics.error("transaction_not_found")
    metrics.error("transaction_not_found")
    metrics.request("/v1/fraud/score", 200)
    later = take(metrics, at=110.0)

    figures = compare(earlier, later)
    assert figures["seconds"] == 10.0
    production, canary = figures["versions"]
    assert (production["model"], production["version"], canary["version"]) == ("fraud", 1, 2)
    assert production["per_second"] == pytest.approx(3.0) and canary["per_second"] == pytest.approx(1.0)
    assert production["labels"] == {"not_fraud": 27.0, "suspicious": 3.0}  # the earlier score is not counted
    assert canary["labels"] == {"highly_suspicious": 10.0}
    assert production["requests"] == 30.0
    assert 2.0 < production["p50_ms"] <= 3.0 and 2.0 < production["p99_ms"] <= 3.0  # within the (2, 3] ms bucket
    assert 15.0 < canary["p50_ms"] <= 25.0
    assert figures["errors"] == [{"code": "transaction_not_found", "count": 2.0, "per_second": 0.2}]
    assert figures["statuses"] == [{"status": 200, "count": 1.0, "per_second": 0.1}]


def test_the_window_keeps_spaced_snapshots_and_rates_over_its_last_seconds() -> None:
    window = TrafficWindow(keep_s=60.0, rate_s=10.0, spacing_s=1.0)
    assert window.summary()["versions"] == []  # one look is not a rate
    for second in range(0, 101, 5):  # 2 scores a second until t=50, then 10 a second
        count = 2.0 * min(second, 50) + 10.0 * max(second - 50, 0)
        window.add(Snapshot(float(second), {("fraud", 1, "not_fraud"): count}))
    window.add(Snapshot(100.5, {("fraud", 1, "not_fraud"): 605.0}))  # too close: replaces the t=100 one
    assert window.snapshots[0].at == 45.0  # older than keep_s dropped
    assert window.snapshots[-1].at == 100.5
    summary = window.summary()
    (version,) = summary["versions"]
    assert summary["seconds"] == pytest.approx(10.5)  # from t=90, the newest snapshot at least rate_s old
    assert version["per_second"] == pytest.approx(10.0)  # (605 - 500) / 10.5
    assert len(summary["series"]) == len(window.snapshots) - 1
    assert summary["series"][0] == {"ago_s": 50.5, "per_second": {"fraud:1": pytest.approx(2.0)}}  # t=45 to 50
    assert summary["series"][-1] == {"ago_s": 0.0, "per_second": {"fraud:1": pytest.approx(10.0)}}


WORKER = """
from inference_api.observability import Metrics
metrics = Metrics()
for i in range({n}):
    metrics.scored("fraud", 1, "not_fraud")
    metrics.answered("fraud", 1, {seconds})
metrics.error("transaction_not_found")
metrics.request("/v1/fraud/score", 200)
"""


def test_with_several_workers_a_snapshot_sums_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two real processes count in prometheus_client's multiprocess files, as `fraudserve serve --workers 2` does.
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for n, seconds in ((3, 0.002), (5, 0.02)):
        subprocess.run([sys.executable, "-c", WORKER.format(n=n, seconds=seconds)], env=environment, check=True)
    metrics = Metrics()  # this process counted nothing: it only reads
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.delenv(MULTIPROCESS_FLAG, raising=False)
    assert take(metrics).scores == {}  # without `--workers N` only this process's own counters
    monkeypatch.setenv(MULTIPROCESS_FLAG, "1")
    snapshot = take(metrics, at=1.0)
    assert snapshot.processes == 2
    assert snapshot.scores == {("fraud", 1, "not_fraud"): 8.0}
    assert snapshot.errors == {"transaction_not_found": 2.0} and snapshot.statuses == {200: 2.0}
    latency = snapshot.latency[("fraud", 1)]
    assert latency.count == 8.0 and latency.total == pytest.approx(3 * 0.002 + 5 * 0.02)
    assert dict(latency.buckets)[0.002] == 3.0 and dict(latency.buckets)[float("inf")] == 8.0
    assert compare(Snapshot(0.0), snapshot)["versions"][0]["requests"] == 8.0


def test_every_scoring_route_counts_its_latency_by_the_versions_that_answered() -> None:
    metrics = Metrics()
    app = FastAPI()
    app.add_middleware(RequestContext, metrics=metrics, max_body_bytes=1 << 20)
    one, two = ModelRef(name="fraud", version=1), ModelRef(name="fraud", version=2)

    @app.post("/single")
    async def single(request: Request) -> dict[str, str]:
        request.state.served = one  # a single score: its version
        return {}

    @app.post("/batch")
    async def batch(request: Request) -> dict[str, str]:
        request.state.served = [one, two, one, one]  # per item: a batch split by the canary share
        return {}

    @app.post("/nothing")
    async def nothing() -> dict[str, str]:
        return {}

    # The series exist before the first look: with PROMETHEUS_MULTIPROC_DIR set (Feast sets it on import), every
    # Metrics of this process shares its values, so earlier tests' counts are in them and only the difference counts.
    for version in ("1", "2"):
        metrics.version_latency.labels("fraud", version)
    earlier = take(metrics, at=0.0)
    with TestClient(app) as client:
        for path in ("/single", "/batch", "/batch", "/nothing"):
            assert client.post(path).status_code == 200
    versions = {v["version"]: v for v in compare(earlier, take(metrics, at=1.0))["versions"]}
    # Per request: version 1 answered the single and both batches, version 2 both batches; none for /nothing.
    assert versions[1]["requests"] == 3.0 and versions[2]["requests"] == 2.0
