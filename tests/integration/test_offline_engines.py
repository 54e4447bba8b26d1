"""The Ray offline engine writes the embedded engine's offline store, value for value, on a real local Ray.

Both runs are `backfill` on the same raw files: the embedded one in this process's DuckDB, the Ray one with the same
catalog SQL per hash shard of each entity (`pipelines.offline.distributed`), in several map tasks and several shards
so that the shuffle is exercised.

Floats: counts, maxima, distinct counts, the seconds since the previous transaction and the fraud rate are equal
exactly; window sums and means may differ in the last bits (a few ulps). DuckDB folds a window's values through a
segment tree laid over all the rows of a hash partition of its window operator, so the grouping of the additions
depends on which other keys share that partition, and a shard holds fewer keys than the whole data set. The same
happens to the embedded path itself when unrelated keys are added to its input. So floats are compared to 8 ulps,
everything else (keys, timestamps, integers, null positions, row sets) exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from core.settings import OfflineEngine, OfflineLayout, Settings
from fraudserve.cli import app
from pipelines.features.catalog import Catalog, load_catalog
from pipelines.generate import GenerateConfig, generate
from pipelines.offline.backfill import BackfillSummary, backfill
from pipelines.offline.distributed import EngineError, RayOptions
from tests.user_repo import user_repo

Run = tuple[OfflineLayout, BackfillSummary]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """The built-in views plus a data engineer's (tests/user_repo.py): new entities, a second card view, every
    function. The generated events carry no customer_id, so the customer view is computed empty."""
    return load_catalog(user_repo(tmp_path_factory.mktemp("repo") / "feature_repo"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, catalog: Catalog) -> Iterator[dict[str, Run]]:
    root = tmp_path_factory.mktemp("engines")
    generated = generate(
        root / "raw", GenerateConfig(seed=23, cards=300, days=10, end=datetime(2026, 11, 1, tzinfo=UTC))
    )
    transactions, labels = generated.files["transactions_parquet"], generated.files["labels_parquet"]
    out: dict[str, Run] = {}
    for engine, options in (
        ("embedded", None),
        # 3 shards per entity, map tasks of 500 of the ~5,000 transactions: several pieces per shard for each reduce.
        ("ray", RayOptions(shards=3, rows_per_task=500, object_store_mb=256, cpus=2)),
    ):
        layout = OfflineLayout(root / engine / "offline")
        started = time.perf_counter()
        summary = backfill(transactions, labels, layout, engine=engine, ray=options, catalog=catalog)
        print(f"{engine}: {time.perf_counter() - started:.1f} s")
        out[engine] = (layout, summary)
    yield out


def sort_keys(name: str, table: pa.Table, catalog: Catalog) -> list[tuple[str, str]]:
    keys = {v.view: v.join_key for v in catalog.window_views}
    if name in keys:  # one row per (entity key, event time)
        return [(keys[name], "ascending"), ("event_timestamp", "ascending")]
    return [(column, "ascending") for column in table.column_names]


def plain(schema: pa.Schema) -> pa.Schema:
    """Names and types; DuckDB marks an entity key `not null` only when it writes from its own query."""
    return pa.schema([pa.field(f.name, f.type) for f in schema])


def test_ray_writes_the_embedded_values(runs: dict[str, Run], catalog: Catalog) -> None:
    (embedded, embedded_summary), (ray, ray_summary) = runs["embedded"], runs["ray"]
    assert ray_summary.rows_written == embedded_summary.rows_written
    assert ray_summary.duplicate_transactions == embedded_summary.duplicate_transactions
    assert ray_summary.labels_without_transaction == embedded_summary.labels_without_transaction
    names = sorted(p.name for p in embedded.root.glob("*.parquet"))
    assert names == sorted(p.name for p in ray.root.glob("*.parquet"))
    assert len(names) == len(catalog.window_views) + 2 == 9
    inexact: dict[str, int] = {}
    for name in names:
        view = name.removesuffix(".parquet")
        expected, actual = pq.read_table(embedded.root / name), pq.read_table(ray.root / name)
        assert plain(actual.schema) == plain(expected.schema), name
        assert actual.num_rows == expected.num_rows, name
        assert expected.num_rows > 0 or view == "customer_windows", name  # no generated event has a customer_id
        expected = expected.sort_by(sort_keys(view, expected, catalog))
        actual = actual.sort_by(sort_keys(view, actual, catalog))
        for column in expected.column_names:
            want, got = expected[column].combine_chunks(), actual[column].combine_chunks()
            assert pc.is_null(got).equals(pc.is_null(want)), f"{view}.{column}: nulls in other rows"
            if pa.types.is_floating(want.type):
                w = want.to_numpy(zero_copy_only=False)
                g = got.to_numpy(zero_copy_only=False)
                valid = ~np.isnan(w)
                np.testing.assert_array_max_ulp(g[valid], w[valid], maxulp=8)
                inexact[f"{view}.{column}"] = int((g[valid] != w[valid]).sum())
            else:
                assert got.equals(want), f"{view}.{column} differs"
    print("float values not bit-equal (within 8 ulps):", {k: v for k, v in inexact.items() if v})
    # Only sums and means can differ: every other float is equal to the bit.
    assert all(v == 0 for k, v in inexact.items() if "_sum_" not in k and "_mean_" not in k), inexact
    # The fraud rate, from labels routed to their transaction's merchant shard, is exercised (and equal, above).
    merchant = pq.read_table(ray.root / "merchant_features.parquet")
    assert pc.sum(pc.greater(merchant["merchant_fraud_rate_30d"], 0)).as_py() > 10
    # A user-declared view on a new entity (merchant category), its fraud rate and minimum included.
    category = pq.read_table(ray.root / "category_windows.parquet")
    assert pc.sum(pc.greater(category["cat_fraud_rate_30d"], 0)).as_py() > 10
    assert pc.min(category["cat_amount_min_1d"]).as_py() >= 0


def test_a_bad_engine_is_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EngineError, match=r"unknown offline engine 'spark': choose one of embedded, ray"):
        backfill(tmp_path / "none.parquet", None, OfflineLayout(tmp_path / "offline"), engine="spark")
    assert not (tmp_path / "offline").exists()  # refused before any work

    monkeypatch.setenv("FRAUDSERVE_OFFLINE_ENGINE", "spark")
    with pytest.raises(ValidationError, match="offline_engine"):
        Settings()
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["features", "backfill", "--transactions", str(tmp_path / "none.parquet")])
    assert result.exit_code == 1
    assert "FRAUDSERVE_OFFLINE_ENGINE='spark': Input should be 'embedded' or 'ray'" in result.output

    monkeypatch.setenv("FRAUDSERVE_OFFLINE_ENGINE", "ray")
    assert Settings().offline_engine is OfflineEngine.ray
    monkeypatch.delenv("FRAUDSERVE_OFFLINE_ENGINE")
    assert Settings().offline_engine is OfflineEngine.embedded  # the default
    result = CliRunner().invoke(
        app, ["features", "backfill", "--engine", "dask", "--transactions", str(tmp_path / "none.parquet")]
    )
    assert result.exit_code == 1
    assert "unknown offline engine 'dask'" in result.output
