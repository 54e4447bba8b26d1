"""The score log's writer with fake models: rows as recorded, bounded queue, sampling, files complete."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.models.manifest import FeatureField, Flavor, Manifest, Thresholds
from core.score_log import SCHEMA, VECTORS, log_files, read_log
from inference_api.domain.score_log import Sampling, ScoreLog
from inference_api.domain.scoring import Score


def fake_model(service: str = "fraud_v2", version: int = 3) -> Any:
    manifest = Manifest(
        flavor=Flavor.lightgbm, model_file="model.txt", feature_service=service,
        features=[FeatureField(name="a", dtype="float64"), FeatureField(name="b", dtype="int64")],
        thresholds=Thresholds(suspicious=0.3, highly_suspicious=0.7),
    )  # fmt: skip
    return SimpleNamespace(name="fraud", version=version, manifest=manifest)


def score(model: Any, tid: str, value: float, vector: list[float], **kw: Any) -> Score:
    return Score(tid, value, "not_fraud", model, [], 12.5, [], np.array(vector), **kw)


def test_rows_are_written_as_recorded_with_nulls_and_shadows(tmp_path: Path) -> None:
    model, candidate = fake_model(), fake_model(version=4)
    log = ScoreLog(Sampling(1.0, tmp_path))
    shadow = score(candidate, "t1", 0.9, [1.0, math.nan], role="shadow")
    log.record("req-1", [score(model, "t1", 0.25, [1.5, math.nan], shadow=shadow), ValueError("an error")])
    log.record_matrix("req-2", model, np.array([[2.0, 3.0]]), np.array([0.8]))
    assert log.flush() == 3
    table = read_log([tmp_path])
    assert table.schema == SCHEMA
    rows = table.to_pylist()
    assert [(r["request_id"], r["transaction_id"], r["version"], r["role"], r["score"], r["label"]) for r in rows] == [
        ("req-1", "t1", 3, "production", 0.25, "not_fraud"),
        ("req-1", "t1", 4, "shadow", 0.9, "not_fraud"),
        ("req-2", None, 3, "direct", 0.8, "highly_suspicious"),
    ]
    assert rows[0]["features"] == [{"name": "a", "value": 1.5}, {"name": "b", "value": None}]
    assert rows[0]["feature_freshness_seconds"] == 12.5 and rows[2]["feature_freshness_seconds"] is None
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = ScoreLog(Sampling(1.0, tmp_path), max_rows=3, on_drop=dropped.append)
    model = fake_model()
    for i in range(5):
        log.record(f"r{i}", [score(model, f"t{i}", 0.1, [1.0, 2.0])])
    assert log.dropped == 2 and dropped == [1, 1]
    assert log.flush() == 3
    log.record("again", [score(model, "t9", 0.1, [1.0, 2.0])])  # room again after the flush
    assert log.flush() == 1


def test_sampling_per_feature_service_and_its_own_destination(tmp_path: Path) -> None:
    elsewhere = tmp_path / "v1-logs"
    rules = {"fraud_v1": Sampling(1.0, elsewhere)}
    log = ScoreLog(Sampling(0.0, tmp_path / "default"), lambda service: rules.get(service, Sampling(0.0, tmp_path)))
    log.record("r", [score(fake_model("fraud_v2"), "t", 0.1, [1.0, 2.0])])
    log.record("r", [score(fake_model("fraud_v1"), "t", 0.1, [1.0, 2.0])])
    log.close()
    assert not log_files([tmp_path / "default"])
    (only,) = log_files([elsewhere])
    assert pq.read_table(only).column("feature_service").to_pylist() == ["fraud_v1"]


def test_the_background_thread_flushes_and_close_writes_the_rest(tmp_path: Path) -> None:
    log = ScoreLog(Sampling(1.0, tmp_path), flush_s=0.05)
    log.start()
    model = fake_model()
    for i in range(100):
        log.record(f"r{i}", [score(model, f"t{i}", i / 100, [float(i), 1.0])])
    log.close()
    table = read_log([tmp_path])
    assert sorted(table.column("transaction_id").to_pylist()) == sorted(f"t{i}" for i in range(100))


def test_a_feature_services_feast_logging_config_sets_rate_and_folder(tmp_path: Path) -> None:
    from feast import FeatureService
    from feast.feature_logging import LoggingConfig
    from feast.infra.offline_stores.file_source import FileLoggingDestination

    from inference_api.domain.score_log import feast_sampling

    services = {
        "logged": FeatureService(
            name="logged", features=[],
            logging_config=LoggingConfig(FileLoggingDestination(path=str(tmp_path / "own")), sample_rate=0.25),
        ),
        "plain": FeatureService(name="plain", features=[]),
    }  # fmt: skip

    class Store:
        def get_feature_service(self, name: str, allow_cache: bool = False) -> FeatureService:
            return services[name]

    default = Sampling(1.0, tmp_path / "default")
    resolve = feast_sampling(Store(), default)  # type: ignore[arg-type]
    assert resolve("logged") == Sampling(0.25, tmp_path / "own")
    assert resolve("plain") == default and resolve("unknown") == default


def _rows(table: Any) -> list[tuple[Any, ...]]:
    return sorted((r["request_id"], r["score"], str(r["features"])) for r in table.to_pylist())


def test_compaction_merges_finished_days_and_readers_see_each_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    from typer.testing import CliRunner

    from core.score_log import COMPACTED, compact, day_dir, read_file
    from fraudserve.cli import app

    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    root = tmp_path / "home" / "logs" / "scores"
    model = fake_model()
    today = datetime.now(UTC).date()
    n = 0
    for back, parts in ((0, 2), (1, 3), (2, 2), (3, 1)):
        for _ in range(parts):
            log = ScoreLog(Sampling(1.0, root))
            for _ in range(5):
                n += 1
                log.record(f"r{n}", [score(model, f"t{n}", n / 100, [float(n), math.nan if n % 3 else 1.0])])
            stamp = datetime(today.year, today.month, today.day, 12, tzinfo=UTC) - timedelta(days=back)
            for block in log._pending:
                block.time = stamp.timestamp()
            assert log.flush() == 5
    everything = _rows(read_log([root]))
    assert len(everything) == n == 40
    listed_before = log_files([root])

    # Every state a reader can meet while a day is compacted (after the rename, between two removals) holds each
    # row once.
    seen: list[list[tuple[Any, ...]]] = []
    unlink = Path.unlink

    def watched(self: Path, missing_ok: bool = False) -> None:
        seen.append(_rows(read_log([root])))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", watched)
    result = CliRunner().invoke(app, ["monitor", "compact"])
    monkeypatch.setattr(Path, "unlink", unlink)
    assert result.exit_code == 0, result.output
    assert len(seen) == 5 and all(state == everything for state in seen)  # 3 + 2 parts removed
    assert _rows(read_log([root])) == everything
    files = {d: [p.name for p in log_files([root]) if p.parent == day_dir(root, d)] for d in
             (today - timedelta(days=k) for k in range(4))}  # fmt: skip
    assert len(files[today]) == 2 and all(not name.startswith(COMPACTED) for name in files[today])  # not finished
    assert [name.startswith(COMPACTED) for name in files[today - timedelta(days=1)]] == [True]
    assert [name.startswith(COMPACTED) for name in files[today - timedelta(days=2)]] == [True]
    assert [name.startswith("part-") for name in files[today - timedelta(days=3)]] == [True]  # one file: left
    # A reader that listed the parts before the compaction reads the same rows from the compacted file.
    assert _rows(pa.concat_tables([read_file(p) for p in listed_before])) == everything

    # A late part of a compacted day: the next compaction merges it with the compacted file; the first listing is
    # still readable through the newest compacted file.
    late = ScoreLog(Sampling(1.0, root))
    late.record("r-late", [score(model, "t-late", 0.5, [1.0, 2.0])])
    stamp = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=1)
    for block in late._pending:
        block.time = stamp.timestamp()
    late.flush()
    assert compact([root], days=1) != [] and compact([root]) == []
    assert len([p for p in log_files([root]) if p.parent == day_dir(root, today - timedelta(days=1))]) == 1
    after = _rows(read_log([root]))
    assert len(after) == n + 1 and [r for r in after if r[0] != "r-late"] == everything
    assert _rows(pa.concat_tables([read_file(p) for p in listed_before])) == everything
    assert pq.read_schema(log_files([root])[0]).remove_metadata() == VECTORS  # the layout written now


def test_a_flush_across_midnight_and_two_roots_writes_each_row_to_its_own_day_and_root(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    own, model = fake_model(service="own_service"), fake_model()
    default, elsewhere = Sampling(1.0, tmp_path / "default"), Sampling(1.0, tmp_path / "own")
    log = ScoreLog(default, lambda service: elsewhere if service == "own_service" else default)
    log.record("a", [score(model, "t1", 0.1, [1.0, 2.0])])
    log.record("b", [score(own, "t2", 0.2, [3.0, 4.0])])
    log.record("c", [score(model, "t3", 0.3, [5.0, 6.0])])
    before = datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC).timestamp()
    for block in log._pending:
        block.time = before if block.request_id == "a" else before + 2
    assert log.flush() == 3
    where = {}
    for path in log_files([tmp_path / "default", tmp_path / "own"]):
        for row in pq.read_table(path).to_pylist():
            where[row["request_id"]] = (path.parent.parent.name, path.parent.name)
    assert where == {
        "a": ("default", "day=2026-11-30"), "b": ("own", "day=2026-12-01"), "c": ("default", "day=2026-12-01"),
    }  # fmt: skip


def test_a_batchs_block_is_written_row_for_row_with_mixed_models_missing_vectors_and_roots(tmp_path: Path) -> None:
    """A request is one block, written column-wise: each row equals its score, whatever mix the block holds."""
    model, candidate, own = fake_model(), fake_model(version=4), fake_model(service="own_service", version=7)
    default, elsewhere = Sampling(1.0, tmp_path / "default"), Sampling(1.0, tmp_path / "own")
    log = ScoreLog(default, lambda service: elsewhere if service == "own_service" else default)
    matrix = np.arange(40, dtype=np.float64).reshape(20, 2)
    matrix[3, 1] = math.nan
    batch: list[Any] = [Score(f"t{i}", i / 20, "not_fraud", model, [], float(i), [], matrix[i]) for i in range(20)]
    batch[5] = ValueError("unknown id")
    shadows = {7: score(candidate, "t7", 0.5, [9.0, 8.0], role="shadow"),  # same root, another version
               9: score(own, "t9", 0.6, [7.0, 6.0], role="shadow")}  # another root: the block is split  # fmt: skip
    for i, shadow in shadows.items():
        batch[i] = dataclasses.replace(batch[i], shadow=shadow)
    batch[11] = dataclasses.replace(batch[11], vector=None)
    log.record("req", batch)
    log.record_matrix("oip", model, matrix[:2], np.array([0.1, 0.9]))
    assert log.flush() == 23  # 19 scores, 2 shadows, 2 OIP rows
    expected = []
    for outcome in batch:
        if isinstance(outcome, Score):
            for s in (outcome, outcome.shadow) if outcome.shadow is not None else (outcome,):
                vector = None if s.vector is None else [None if math.isnan(v) else v for v in s.vector]
                expected.append(("req", s.transaction_id, s.model.version, s.model.manifest.feature_service, s.role,
                                 s.score, s.label, s.feature_freshness_seconds, vector))  # fmt: skip
    expected += [("oip", None, 3, "fraud_v2", "direct", 0.1, "not_fraud", None, [0.0, 1.0]),
                 ("oip", None, 3, "fraud_v2", "direct", 0.9, "highly_suspicious", None, [2.0, 3.0])]  # fmt: skip
    got = []
    for root in ("default", "own"):
        for row in read_log([tmp_path / root]).to_pylist():
            assert (root == "own") == (row["feature_service"] == "own_service")
            features = row["features"]
            assert features is None or [f["name"] for f in features] == ["a", "b"][: len(features)]
            values = None if not features else [f["value"] for f in features]
            got.append((row["request_id"], row["transaction_id"], row["version"], row["feature_service"], row["role"],
                        row["score"], row["label"], row["feature_freshness_seconds"], values))  # fmt: skip
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    # In one root, the rows keep the request's order.
    default_rows = [g for g in got if g[3] != "own_service"]
    assert default_rows == [e for e in expected if e[3] != "own_service"]
