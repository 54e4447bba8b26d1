"""Decision-path reasons: additive, TreeSHAP's bias, NaN-safe, and XGBoost's own approx_contribs."""

from __future__ import annotations

from pathlib import Path

import lightgbm
import numpy as np
import pytest
import xgboost

from core.models.attribution import LightGBMPathExplainer, RuntimeExplainer, XGBoostPathExplainer, make_explainer
from core.models.compiled import CompiledRuntime
from core.models.manifest import Flavor
from core.models.runtime import load_runtime
from core.settings import ReasonsMethod

FEATURES = 6


def _data(seed: int, rows: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take each split's default direction
    y = ((np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * np.nan_to_num(x[:, 2])) > 0.5).astype(int)
    return x, y


@pytest.fixture(scope="module")
def lightgbm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = _data(1)
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1, "num_leaves": 15, "min_data_in_leaf": 5},
        lightgbm.Dataset(x, y),
        num_boost_round=40,
    )
    path = tmp_path_factory.mktemp("lgbm") / "model.txt"
    booster.save_model(str(path))
    return path


@pytest.fixture(scope="module")
def xgboost_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = _data(2)
    booster = xgboost.train({"objective": "binary:logistic", "nthread": 1, "max_depth": 4}, xgboost.DMatrix(x, y), 30)
    path = tmp_path_factory.mktemp("xgb") / "model.json"
    booster.save_model(str(path))
    return path


def test_lightgbm_path_contributions_add_up_to_the_margin_with_treeshaps_bias(lightgbm_model: Path) -> None:
    explainer = LightGBMPathExplainer(lightgbm_model)
    booster = lightgbm.Booster(model_file=str(lightgbm_model))
    rows, _ = _data(3, 500)
    contributions = explainer.contributions(rows)
    assert contributions.shape == (500, FEATURES + 1)
    np.testing.assert_allclose(contributions.sum(axis=1), booster.predict(rows, raw_score=True), atol=1e-10)
    shap = np.asarray(booster.predict(rows, pred_contrib=True))
    np.testing.assert_allclose(contributions[:, -1], shap[:, -1], atol=1e-12)
    # Not Shapley values, but they point the same way: the feature TreeSHAP ranks first is in the path top 2.
    agree = np.mean(
        [np.argmax(shap[i, :-1]) in np.argsort(-contributions[i, :-1])[:2] for i in range(len(rows))]
    )  # fmt: skip
    assert agree > 0.8
    # One row alone (LightGBM's single-row fast C API) equals the same row in a batch (Booster.predict).
    assert explainer._single.ready
    for i in range(50):
        np.testing.assert_array_equal(explainer.contributions(rows[i : i + 1])[0], contributions[i])


def test_lightgbm_path_credits_only_features_on_the_path(tmp_path: Path) -> None:
    """A one-split stump: only its split feature gets credit, with the step from the mean to the leaf."""
    x = np.array([[0.0, 5.0], [1.0, 5.0]] * 50)
    y = np.array([0, 1] * 50)
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 2, "min_data_in_leaf": 1, "min_data_in_bin": 1},
        lightgbm.Dataset(x, y),
        num_boost_round=1,
    )
    booster.save_model(str(tmp_path / "stump.txt"))
    contributions = LightGBMPathExplainer(tmp_path / "stump.txt").contributions(np.array([[0.0, 5.0], [1.0, 5.0]]))
    assert contributions[:, 1].tolist() == [0.0, 0.0]
    assert contributions[0, 0] < 0 < contributions[1, 0]
    assert contributions[0, 0] == pytest.approx(-contributions[1, 0])  # equal covers: symmetric steps


def test_xgboost_path_contributions_are_xgboosts_approx_contribs(xgboost_model: Path) -> None:
    explainer = XGBoostPathExplainer(xgboost_model)
    booster = xgboost.Booster(model_file=str(xgboost_model))
    rows, _ = _data(4, 300)
    contributions = explainer.contributions(rows)
    expected = booster.predict(xgboost.DMatrix(rows, missing=np.nan), pred_contribs=True, approx_contribs=True)
    np.testing.assert_allclose(contributions, expected, atol=1e-6)
    margin = booster.predict(xgboost.DMatrix(rows, missing=np.nan), output_margin=True)
    np.testing.assert_allclose(contributions.sum(axis=1), margin, atol=1e-4)


def test_make_explainer_picks_the_method(lightgbm_model: Path) -> None:
    runtime = load_runtime(Flavor.lightgbm, lightgbm_model)
    assert isinstance(
        make_explainer(ReasonsMethod.path, Flavor.lightgbm, lightgbm_model, runtime), LightGBMPathExplainer
    )
    shap = make_explainer(ReasonsMethod.shap, Flavor.lightgbm, lightgbm_model, runtime)
    assert isinstance(shap, RuntimeExplainer)
    rows, _ = _data(5, 20)
    booster = lightgbm.Booster(model_file=str(lightgbm_model))
    np.testing.assert_allclose(shap.contributions(rows), booster.predict(rows, pred_contrib=True), atol=1e-12)


def test_lightgbm_reasons_through_the_compiled_walk_equal_pred_leafs_exactly(
    lightgbm_model: Path, tmp_path: Path
) -> None:
    """With the model compiled, the leaves come from the compiled walk and the sums from C: the same numbers, bit for
    bit, as LightGBM's pred_leaf and the table gather, for batches, single rows and NaNs."""
    runtime = load_runtime(Flavor.lightgbm, lightgbm_model, engine="compiled", cache_dir=tmp_path)
    assert isinstance(runtime, CompiledRuntime)
    explainer = make_explainer(ReasonsMethod.path, Flavor.lightgbm, lightgbm_model, runtime)
    assert isinstance(explainer, LightGBMPathExplainer)
    assert explainer.compiled is runtime
    rows, _ = _data(6, 700)
    rows[:5] = np.nan
    contributions = explainer.contributions(rows)
    np.testing.assert_array_equal(contributions, explainer.gathered(rows))
    for i in range(30):
        np.testing.assert_array_equal(explainer.contributions(rows[i : i + 1])[0], contributions[i])
    # Predictions and reasons from one walk: each equal, bit for bit, to its own call (score:batch's path).
    both = explainer.predict_and_explain(rows)
    assert both is not None
    np.testing.assert_array_equal(both[0], runtime.predict(rows))
    np.testing.assert_array_equal(both[1], contributions)
    # Every compiled walk ends at a leaf (a node that is its own left child).
    left, _ = runtime.layout()
    compiled_leaves = runtime.leaves(rows)
    assert compiled_leaves.shape == (len(rows), runtime.library.num_tree)
    assert np.all(left[compiled_leaves] == compiled_leaves)


def test_a_compiled_walk_that_disagrees_falls_back_to_pred_leaf(
    lightgbm_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = load_runtime(Flavor.lightgbm, lightgbm_model, engine="compiled", cache_dir=tmp_path)
    assert isinstance(runtime, CompiledRuntime)
    left, roots = runtime.layout()
    swapped = roots[::-1].copy()  # the trees in the wrong order: the layout check or the probe rows catch it
    runtime.layout = lambda: (left, swapped)  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="fraudserve.models"):
        explainer = LightGBMPathExplainer(lightgbm_model, runtime=runtime)
    assert explainer.compiled is None
    assert "pred_leaf" in caplog.text
    assert explainer.predict_and_explain(np.zeros((1, FEATURES))) is None  # the caller predicts and explains apart
    rows, _ = _data(7, 50)
    np.testing.assert_array_equal(explainer.contributions(rows), explainer.gathered(rows))
    booster = lightgbm.Booster(model_file=str(lightgbm_model))
    np.testing.assert_allclose(
        explainer.contributions(rows).sum(axis=1), booster.predict(rows, raw_score=True), atol=1e-10
    )
