"""The score log's two layouts: files of the older one (the vector as (name, value) pairs) and of the one written
now (names once, values as a list) read as the same rows, by the report's reader and by `train --from-logs`."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.score_log import (
    SCHEMA,
    VECTORS,
    as_pairs,
    as_vectors,
    compact,
    day_dir,
    log_files,
    read_file,
    read_log,
    write_part,
)
from core.settings import Settings
from inference_api.domain.score_log import Sampling, ScoreLog
from inference_api.domain.scoring import Score
from tests.unit.test_from_logs import served, settings  # noqa: F401  (a fixture)
from tests.unit.test_score_log import fake_model


def pairs_table(n: int, offset: int = 0) -> pa.Table:
    """`n` rows of the older layout, of two models with other feature names, a missing vector and null values."""
    names = [["a", "b"], ["c", "d", "e"]]
    rows = []
    for i in range(offset, offset + n):
        listed = names[i % 2]
        vector = [{"name": f, "value": None if (i + k) % 5 == 0 else float(i * 10 + k)} for k, f in enumerate(listed)]
        rows.append({"request_id": f"r{i}", "time": datetime(2026, 11, 30, 12, tzinfo=UTC) + timedelta(seconds=i),
                     "transaction_id": None if i % 9 == 0 else f"t{i}", "model": "fraud", "version": 1 + i % 2,
                     "role": "production", "feature_service": "svc", "score": i / 100, "label": "not_fraud",
                     "feature_freshness_seconds": None if i % 4 == 0 else float(i),
                     "features": [] if i % 7 == 3 else vector})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def test_both_layouts_convert_into_each_other_row_for_row() -> None:
    table = pairs_table(40)
    vectors = as_vectors(table)
    assert vectors.schema == VECTORS
    assert len(set(vectors.column("feature_names").combine_chunks().dictionary.to_pylist())) == 3  # [] included
    assert as_pairs(vectors).equals(table)
    assert as_pairs(pa.concat_tables([as_vectors(table.slice(0, 7)), as_vectors(table.slice(7))])).equals(table)
    assert as_pairs(VECTORS.empty_table()).schema == SCHEMA


def test_a_day_of_both_layouts_reads_and_compacts_to_the_same_rows(tmp_path: Path) -> None:
    old, new = pairs_table(30), pairs_table(30, offset=30)
    day = datetime(2026, 11, 30, tzinfo=UTC).date()
    write_part(tmp_path, day, old, 1)  # written by an older version of the API
    write_part(tmp_path, day, as_vectors(new), 2)
    expected = pa.concat_tables([old, new]).sort_by("request_id")
    assert read_log([tmp_path]).sort_by("request_id").equals(expected)
    listed = log_files([tmp_path])
    (merged,) = compact([tmp_path])
    assert pq.read_schema(merged).remove_metadata() == SCHEMA  # a mixed day: the layout every file reads as
    assert read_log([tmp_path]).sort_by("request_id").equals(expected)
    assert pa.concat_tables([read_file(p) for p in listed]).sort_by("request_id").equals(expected)

    other = day_dir(tmp_path, day - timedelta(days=1))  # a day of the new layout only: compacted as it is
    write_part(tmp_path, day - timedelta(days=1), as_vectors(new.slice(0, 10)), 3)
    write_part(tmp_path, day - timedelta(days=1), as_vectors(old.slice(0, 10)), 4)
    (merged,) = compact([tmp_path], today=day)
    assert merged.parent == other and pq.read_schema(merged).remove_metadata() == VECTORS
    assert (
        read_file(merged)
        .sort_by("request_id")
        .equals(pa.concat_tables([new.slice(0, 10), old.slice(0, 10)]).sort_by("request_id"))
    )


def test_the_writer_writes_the_new_layout_with_each_models_names_once(tmp_path: Path) -> None:
    model, candidate = fake_model(), fake_model(version=4)
    matrix = np.arange(512, dtype=np.float64).reshape(256, 2)
    matrix[::5, 1] = math.nan
    log = ScoreLog(Sampling(1.0, tmp_path))
    log.record("req", [Score(f"t{i}", i / 256, "not_fraud", model, [], 1.0, [], matrix[i]) for i in range(256)])
    log.record("shadowed", [Score("t", 0.5, "not_fraud", candidate, [], None, [], None)])
    assert log.flush() == 257
    (path,) = log_files([tmp_path])
    stored = pq.read_table(path)
    assert stored.schema.remove_metadata() == VECTORS
    assert stored.column("feature_names").combine_chunks().dictionary.to_pylist() == ['["a", "b"]', "[]"]
    rows = read_file(path).to_pylist()
    assert [r["features"] for r in rows[:2]] == [
        [{"name": "a", "value": 0.0}, {"name": "b", "value": None}],
        [{"name": "a", "value": 2.0}, {"name": "b", "value": 3.0}],
    ]
    assert rows[-1]["features"] == [] and rows[-1]["version"] == 4


def test_train_from_logs_reads_either_layout_alike(settings: Settings) -> None:  # noqa: F811
    from fraudserve.log_training import logged_training_set

    served(settings, 1500)
    older = logged_training_set(settings, "fraud")
    (path,) = log_files([settings.score_log_dir])
    table = pq.read_table(path)
    path.unlink()
    write_part(settings.score_log_dir, datetime(2026, 11, 30, tzinfo=UTC).date(), as_vectors(table), 2)
    newer = logged_training_set(settings, "fraud")
    pd.testing.assert_frame_equal(older.frame, newer.frame)


def test_a_columnar_batch_is_logged_as_its_scores_would_be(tmp_path: Path) -> None:
    from tests.unit.test_scoring_answer import batch

    scored = batch([f"t{i}" for i in range(12)], [1, 2, 5, 6, 7, 11], 3)
    scored.model.manifest = fake_model().manifest  # type: ignore[attr-defined]
    scored.matrix = scored.matrix[:, :2]
    by_columns, by_scores = ScoreLog(Sampling(1.0, tmp_path / "columns")), ScoreLog(Sampling(1.0, tmp_path / "items"))
    by_columns.record_batch("req", scored)
    by_scores.record("req", scored.outcomes())
    assert by_columns.flush() == by_scores.flush() == 6
    columns, items = read_log([tmp_path / "columns"]), read_log([tmp_path / "items"])
    assert columns.drop_columns("time").equals(items.drop_columns("time"))
    assert columns.column("transaction_id").to_pylist() == ["t1", "t2", "t5", "t6", "t7", "t11"]
