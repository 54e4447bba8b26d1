"""The compiled CPU engine: same scores as LightGBM/XGBoost (NaNs included), one build per model, native fallback."""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from core.models import compiled
from core.models.compiled import CompiledRuntime, CompileError, build_library
from core.models.manifest import Flavor
from core.models.runtime import LightGBMRuntime, XGBoostRuntime, load_runtime

needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler to build compiled models"
)

FEATURES = 12
GPU_MODELS = Path(__file__).resolve().parents[2] / "bench" / "gpu_models"


def _synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    x[:, 3] = rng.integers(0, 5, size=rows)  # repeated values: rows land exactly on thresholds
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=rows) > 0.5).astype(int)
    x[rng.random(x.shape) < 0.15] = np.nan  # trained with missing values: learned default directions
    return x, y


def _rows(seed: int = 1) -> np.ndarray:
    """Test rows: NaNs, zeros, infinities and exact repeats as well as ordinary values."""
    x, _ = _synthetic(3000, seed)
    x[:50] = np.nan
    x[50:60] = 0.0
    x[60, :] = np.inf
    x[61, :] = -np.inf
    return x


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[Flavor, Path]:
    """A LightGBM and an XGBoost binary classifier (60 trees each) trained on data with missing values."""
    import lightgbm
    import xgboost

    folder = tmp_path_factory.mktemp("models")
    x, y = _synthetic(4000, 0)
    names = [f"f{i}" for i in range(FEATURES)]
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1, "num_leaves": 31, "min_data_in_leaf": 5},
        lightgbm.Dataset(x, y, feature_name=names),
        num_boost_round=60,
    )
    booster.save_model(str(folder / "model.txt"))
    xgb = xgboost.train(
        {"objective": "binary:logistic", "nthread": 1, "max_depth": 6},
        xgboost.DMatrix(x, y, feature_names=names, missing=np.nan),
        60,
    )
    xgb.save_model(str(folder / "model.json"))
    return {Flavor.lightgbm: folder / "model.txt", Flavor.xgboost: folder / "model.json"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compiled-cache")


def _native(flavor: Flavor, path: Path) -> LightGBMRuntime | XGBoostRuntime:
    return LightGBMRuntime(path, threads=1) if flavor is Flavor.lightgbm else XGBoostRuntime(path, threads=1)


@needs_cc
@pytest.mark.parametrize("flavor", [Flavor.lightgbm, Flavor.xgboost])
def test_compiled_equals_native_batch_and_single_rows(flavor: Flavor, models: dict[Flavor, Path], cache: Path) -> None:
    runtime = CompiledRuntime(flavor, models[flavor], threads=2, cache_dir=cache)
    native = _native(flavor, models[flavor])
    rows = _rows()
    expected = native.predict(rows)
    assert np.isnan(rows).any()
    np.testing.assert_allclose(runtime.predict(rows), expected, rtol=0, atol=1e-6)
    big = np.tile(rows, (2, 1))  # above PARALLEL_MIN_ROWS: split across threads
    np.testing.assert_allclose(runtime.predict(big), np.tile(expected, 2), rtol=0, atol=1e-6)
    for i in range(0, 200):
        single = runtime.predict(rows[i : i + 1])
        assert single.shape == (1,)
        assert abs(single[0] - expected[i]) <= 1e-6, i
    # Inputs the fast one-row path does not take: read-only, float32, non-contiguous.
    frozen = rows[:1].copy()
    frozen.flags.writeable = False
    assert abs(runtime.predict(frozen)[0] - expected[0]) <= 1e-6
    assert abs(runtime.predict(np.asfortranarray(rows[:5]))[4] - expected[4]) <= 1e-6
    as_float32 = rows[:20].astype(np.float32)
    np.testing.assert_allclose(runtime.predict(as_float32), native.predict(as_float32), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="matrix"):
        runtime.predict(rows[:, :-1])  # never read past a row


@needs_cc
@pytest.mark.parametrize("flavor", [Flavor.lightgbm, Flavor.xgboost])
def test_contributions_and_names_come_from_the_native_library(
    flavor: Flavor, models: dict[Flavor, Path], cache: Path
) -> None:
    runtime = load_runtime(flavor, models[flavor], engine="compiled", cache_dir=cache)
    assert isinstance(runtime, CompiledRuntime)
    native = _native(flavor, models[flavor])
    rows = _rows()[:5]
    assert runtime.feature_names == native.feature_names
    np.testing.assert_allclose(runtime.contributions(rows), native.contributions(rows), rtol=0, atol=1e-9)


@needs_cc
def test_a_second_load_reuses_the_build(models: dict[Flavor, Path], tmp_path: Path) -> None:
    first = CompiledRuntime(Flavor.xgboost, models[Flavor.xgboost], cache_dir=tmp_path)
    assert first.build.built_now
    libraries = sorted(p.name for p in tmp_path.glob("*.so"))
    # No compiler at all now: the cached library is still used.
    second = CompiledRuntime(Flavor.xgboost, models[Flavor.xgboost], cache_dir=tmp_path, compiler="/nonexistent/cc")
    assert not second.build.built_now
    assert sorted(p.name for p in tmp_path.glob("*.so")) == libraries
    assert second.build.record["probe_max_abs_diff"] <= 1e-6
    rows = _rows()[:100]
    np.testing.assert_array_equal(first.predict(rows), second.predict(rows))


@needs_cc
def test_workers_starting_together_build_once(models: dict[Flavor, Path], tmp_path: Path) -> None:
    with ThreadPoolExecutor(3) as pool:
        builds = list(pool.map(lambda _: build_library(Flavor.lightgbm, models[Flavor.lightgbm], tmp_path), range(3)))
    assert sum(b.built_now for b in builds) == 1
    assert len({b.library for b in builds}) == 1
    assert len(list(tmp_path.glob("*.so"))) == 1
    assert not list(tmp_path.glob("build-*"))  # the build's temporary folder is gone


@needs_cc
def test_a_tampered_library_is_rebuilt_not_loaded(models: dict[Flavor, Path], tmp_path: Path) -> None:
    CompiledRuntime(Flavor.xgboost, models[Flavor.xgboost], cache_dir=tmp_path)
    (library,) = tmp_path.glob("*.so")
    tampered = tmp_path / "tampered"
    tampered.write_bytes(library.read_bytes() + b"\0")  # no longer the file the build recorded
    tampered.chmod(0o700)
    os.replace(tampered, library)  # a new file: the loaded one must not change under the process
    again = CompiledRuntime(Flavor.xgboost, models[Flavor.xgboost], cache_dir=tmp_path)
    assert again.build.built_now


def test_a_cache_directory_open_to_others_is_refused(
    models: dict[Flavor, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(CompileError, match="not private"):
        build_library(Flavor.xgboost, models[Flavor.xgboost], shared)
    with caplog.at_level(logging.WARNING, logger="fraudserve.models"):
        runtime = load_runtime(Flavor.xgboost, models[Flavor.xgboost], engine="compiled", cache_dir=shared)
    assert isinstance(runtime, XGBoostRuntime)
    assert not list(shared.glob("*.so"))


@pytest.mark.parametrize("engine", ["compiled", "auto"])
def test_without_a_compiler_the_native_library_serves(
    engine: str, models: dict[Flavor, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="fraudserve.models"):
        runtime = load_runtime(
            Flavor.lightgbm, models[Flavor.lightgbm], engine=engine, cache_dir=tmp_path, compiler="/nonexistent/cc"
        )
    assert isinstance(runtime, LightGBMRuntime)
    (record,) = [r for r in caplog.records if "native library" in r.getMessage()]
    assert record.levelno == (logging.WARNING if engine == "compiled" else logging.INFO)
    assert "/nonexistent/cc" in record.getMessage()


def test_a_failing_compiler_falls_back_with_a_warning(
    models: dict[Flavor, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUDSERVE_CC", "false")  # a compiler command that always fails
    with caplog.at_level(logging.WARNING, logger="fraudserve.models"):
        runtime = load_runtime(Flavor.lightgbm, models[Flavor.lightgbm], engine="auto", cache_dir=tmp_path)
    assert isinstance(runtime, LightGBMRuntime)
    assert any("compiled model unavailable" in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.glob("*.so"))


def test_an_unusable_cache_directory_falls_back(models: dict[Flavor, Path], tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    runtime = load_runtime(Flavor.xgboost, models[Flavor.xgboost], engine="compiled", cache_dir=not_a_directory / "x")
    assert isinstance(runtime, XGBoostRuntime)


def test_native_engine_and_bad_engine(models: dict[Flavor, Path], tmp_path: Path) -> None:
    assert isinstance(load_runtime(Flavor.lightgbm, models[Flavor.lightgbm], cache_dir=tmp_path), LightGBMRuntime)
    assert not list(tmp_path.glob("*.so"))
    with pytest.raises(ValueError, match="engine"):
        load_runtime(Flavor.lightgbm, models[Flavor.lightgbm], engine="fast")


@needs_cc
def test_a_model_that_disagrees_on_the_probe_rows_is_not_used(
    models: dict[Flavor, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled, "TOLERANCE", -1.0)  # nothing passes: stands in for a generator bug
    with pytest.raises(CompileError, match="differ"):
        build_library(Flavor.xgboost, models[Flavor.xgboost], tmp_path)
    assert not list(tmp_path.glob("*.so"))


@needs_cc
@pytest.mark.parametrize(("flavor", "file"), [(Flavor.lightgbm, "lightgbm.txt"), (Flavor.xgboost, "xgboost.json")])
def test_the_benchmark_models_score_as_their_frameworks(flavor: Flavor, file: str, cache: Path) -> None:
    """The real 384/409-tree models of bench/gpu_models: their inputs (5 % missing) and expected scores."""
    forest = compiled.read_forest(flavor, GPU_MODELS / file)
    inputs = np.load(GPU_MODELS / "inputs.npy")
    expected = np.load(GPU_MODELS / f"{flavor.value}_expected.npy")
    library = cache / f"{flavor.value}-bench.so"
    source = cache / f"{flavor.value}-bench.c"
    source.write_text(compiled.c_source(forest))
    # -O0: the same arithmetic as the cached -O3 build, compiled in a fraction of the time.
    import subprocess

    compiler = compiled.find_compiler()
    subprocess.run([*compiler, "-O0", "-fPIC", "-shared", "-o", str(library), str(source), "-lm"], check=True)
    scores = compiled._Library(library, forest.num_feature).predict(inputs)
    assert np.isnan(inputs).any()
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    probes = compiled.probe_rows(forest)
    native = _native(flavor, GPU_MODELS / file)
    np.testing.assert_allclose(
        compiled._Library(library, forest.num_feature).predict(probes), native.predict(probes), rtol=0, atol=1e-6
    )


@needs_cc
def test_sum_leaves_adds_each_reached_leafs_row_in_tree_order(models: dict[Flavor, Path], cache: Path) -> None:
    """`sum_leaves` walks as `predict` does: a table holding each leaf's value sums to the margin, split across
    threads or not; a table of the wrong size or with columns out of range is refused."""
    runtime = CompiledRuntime(Flavor.lightgbm, models[Flavor.lightgbm], threads=2, cache_dir=cache)
    left, roots = runtime.layout()
    leaves = np.flatnonzero(left == np.arange(len(left)))
    forest = compiled.read_forest(Flavor.lightgbm, models[Flavor.lightgbm])
    # Column 0: the leaf's value (its margin share); column 1: 1 per tree reached.
    start = np.zeros(len(left) + 1, dtype=np.int64)
    start[leaves + 1] = 2
    start = np.cumsum(start)
    table = compiled.NodeTable(
        start=start,
        column=np.tile(np.array([0, 1], dtype=np.int32), len(leaves)),
        value=np.column_stack([forest.threshold[leaves], np.ones(len(leaves))]).ravel(),
        width=2,
    )
    rows = np.tile(_rows(), (2, 1))  # above PARALLEL_MIN_ROWS: split across threads
    summed = runtime.sum_leaves(rows, table)
    native = LightGBMRuntime(models[Flavor.lightgbm], threads=1).booster.predict(rows, raw_score=True)
    np.testing.assert_allclose(summed[:, 0], native, rtol=0, atol=1e-9)
    assert np.all(summed[:, 1] == len(roots))
    scores, both = runtime.predict_and_sum_leaves(rows, table)  # one walk for both: the same numbers
    np.testing.assert_array_equal(scores, runtime.predict(rows))
    np.testing.assert_array_equal(both, summed)
    scores, both = runtime.predict_and_sum_leaves(rows[:300], table)  # on one thread
    np.testing.assert_array_equal(scores, runtime.predict(rows[:300]))
    np.testing.assert_array_equal(both, summed[:300])
    np.testing.assert_array_equal(runtime.sum_leaves(rows[:100], table), summed[:100])
    np.testing.assert_array_equal(runtime.sum_leaves(rows[7:8], table)[0], summed[7])
    short = compiled.NodeTable(start[:-1].copy(), table.column[:-2].copy(), table.value[:-2].copy(), 2)
    with pytest.raises(ValueError, match="nodes"):
        runtime.sum_leaves(rows, short)
    with pytest.raises(ValueError, match="nodes"):
        runtime.predict_and_sum_leaves(rows, short)
    with pytest.raises(ValueError, match="columns"):
        compiled.NodeTable(start, table.column, table.value, 1)
