"""The hot path's metrics (inference_api/observability.py) kept in plain Python and flushed into prometheus_client:
every series reads exactly as if each value had been observed or counted on its own, after any collection."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inference_api.observability import _BUCKETS, Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _histogram(name: str, labels: dict[str, str], values: list[float], bounds: tuple[float, ...]) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for bound in (*bounds, math.inf):
        le = "+Inf" if bound == math.inf else str(float(bound))
        out[(f"{name}_bucket", tuple(sorted({**labels, "le": le}.items())))] = sum(v <= bound for v in values)
    out[(f"{name}_count", tuple(sorted(labels.items())))] = len(values)
    out[(f"{name}_sum", tuple(sorted(labels.items())))] = math.fsum(values)
    return out


def test_every_hot_series_reads_as_if_each_value_was_observed_and_counted() -> None:
    metrics = Metrics()
    tag = uuid.uuid4().hex[:8]  # label values of this test only (multiprocess files are shared within a process)
    stage, model, route = f"stage-{tag}", f"model-{tag}", f"/route-{tag}"
    seconds = [0.0, 0.0005, 0.0004999, 0.00050001, 0.003, 0.0031, 0.01, 2.5, 2.6, 100.0, 1e-9, 0.0075] * 3
    sizes = [1, 2, 3, 4, 8, 9, 64, 512, 513, 1]
    for i, value in enumerate(seconds):
        metrics.stage(stage, value)
        metrics.answered(model, 7, value * 2)
        metrics.request(route, 200 if i % 3 else 503)
        metrics.scored(model, 7, "legit" if i % 2 else "uncertain", 1 + i % 4)
    for size in sizes:
        metrics.batch(size)
    got = _samples(metrics)
    expected = {
        **_histogram("fraudserve_stage_seconds", {"stage": stage}, seconds, _BUCKETS),
        **_histogram("fraudserve_version_request_seconds", {"model": model, "version": "7"},
                     [v * 2 for v in seconds], _BUCKETS),
        ("fraudserve_http_requests_total", (("route", route), ("status", "200"))): 24.0,
        ("fraudserve_http_requests_total", (("route", route), ("status", "503"))): 12.0,
        ("fraudserve_scores_total", (("label", "legit"), ("model", model), ("version", "7"))):
            float(sum(1 + i % 4 for i in range(len(seconds)) if i % 2)),
        ("fraudserve_scores_total", (("label", "uncertain"), ("model", model), ("version", "7"))):
            float(sum(1 + i % 4 for i in range(len(seconds)) if not i % 2)),
    }  # fmt: skip
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-12), (key, got.get(key), value)
    batch = _histogram("fraudserve_batch_size", {}, [float(s) for s in sizes], (1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
    before = {k: got.get(k, 0.0) for k in batch}  # other tests' apps in this process may have counted batches
    metrics.batch(3)
    again = _samples(metrics)
    for key in batch:
        grew = again[key] - before[key]
        if key[0].endswith("_sum"):
            assert math.isclose(grew, 3.0), key
        elif (
            key[0].endswith("_count")
            or dict(key[1])["le"] in ("4.0", "8.0", "16.0", "+Inf")
            or float(dict(key[1])["le"]) >= 4
        ):
            assert grew == 1, key
        else:
            assert grew == 0, key
    assert metrics.render().count(stage.encode()) >= len(_BUCKETS) + 3  # render flushes too


def test_a_nan_observation_takes_prometheus_clients_own_way() -> None:
    metrics = Metrics()
    stage = f"nan-{uuid.uuid4().hex[:8]}"
    metrics.stage(stage, float("nan"))
    metrics.stage(stage, 0.001)
    got = _samples(metrics)
    assert got[("fraudserve_stage_seconds_count", (("stage", stage),))] == 1  # the NaN is in no bucket, as before
    assert math.isnan(got[("fraudserve_stage_seconds_sum", (("stage", stage),))])


def test_the_app_task_flushes_without_a_read() -> None:
    metrics = Metrics()
    route = f"/flushed-{uuid.uuid4().hex[:8]}"
    metrics.request(route, 200)
    child = metrics.requests.labels(route, "200")
    assert child._value.get() == 0  # pending until a flush

    async def run() -> None:
        task = asyncio.create_task(metrics.keep_flushed(0.01))
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run())
    assert child._value.get() == 1
