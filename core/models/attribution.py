"""Reasons for a score: per-feature contributions to its log-odds, by decision path (fast) or TreeSHAP (exact).

Two methods, both additive (the contributions plus the bias column sum to the model's raw margin):

- `path`: each tree's decision path credits the split feature of every node it passes with the change in the
  node's expected value (Saabas; XGBoost's `approx_contribs`). For LightGBM this is precomputed once per model:
  every leaf's path gives one row of contributions, so a row's reasons are its leaf indices (one `pred_leaf` call,
  as cheap as a prediction) gathered from that table and summed. Node expected values are cover-weighted means of
  their leaves, as TreeSHAP's, so the bias column equals TreeSHAP's.
- `shap`: the framework's own TreeSHAP (`pred_contrib`): exact Shapley values, but its per-row cost grows with
  trees x leaves x depth^2: 3 ms a row on a 285-tree, 31-leaf model here, against 0.04 ms for `path`
  (`python -m bench.model`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.models.manifest import Flavor
from core.models.runtime import SINGLE_THREAD_ROWS, XGBoostRuntime
from core.settings import ReasonsMethod

log = logging.getLogger("fraudserve.models")

# A LightGBM table holds one float64 per (leaf, feature); above this it is not built and TreeSHAP answers instead.
MAX_TABLE_CELLS = 16_000_000


class Explainer(Protocol):
    def contributions(self, rows: np.ndarray) -> np.ndarray:
        """(rows, features + 1): per-feature contributions to the raw margin, the bias in the last column."""
        ...


class LightGBMPathExplainer:
    """Decision-path contributions for a LightGBM model: one `pred_leaf` call and a table lookup per row."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import lightgbm

        self.booster = lightgbm.Booster(model_file=str(path))
        self.threads = threads
        dump = self.booster.dump_model()
        n_features = int(dump["max_feature_idx"]) + 1
        trees = dump["tree_info"]
        self.offsets = np.zeros(len(trees), dtype=np.int64)
        cells = sum(int(t["num_leaves"]) for t in trees) * (n_features + 1)
        if cells > MAX_TABLE_CELLS:
            raise ValueError(f"{len(trees)} trees need a {cells:,}-cell table, more than {MAX_TABLE_CELLS:,}")
        rows: list[np.ndarray] = []
        for i, tree in enumerate(trees):
            self.offsets[i] = len(rows)
            table = np.zeros((int(tree["num_leaves"]), n_features + 1))
            _fill_lightgbm(tree["tree_structure"], table, np.zeros(n_features + 1), None)
            rows.extend(table)
        self.table = np.vstack(rows) if rows else np.zeros((0, n_features + 1))
        self._single = _SingleRowLeaves(self.booster, n_features, len(trees))

    def leaves(self, rows: np.ndarray) -> np.ndarray:
        """Each row's leaf index in every tree, (rows, trees)."""
        if rows.shape[0] == 1 and self._single.ready:
            return self._single(rows[0])[None, :]
        threads = 1 if rows.shape[0] <= SINGLE_THREAD_ROWS else self.threads
        leaves = np.asarray(self.booster.predict(rows, pred_leaf=True, num_threads=threads), dtype=np.int64)
        return leaves.reshape(rows.shape[0], -1)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        result: np.ndarray = self.table[self.leaves(rows) + self.offsets].sum(axis=1)
        return result


class _SingleRowLeaves:
    """One row's leaf indices through LightGBM's single-row fast C API (`LGBM_BoosterPredictForMatSingleRowFast`).

    `Booster.predict` spends most of a one-row call in Python-side checks; the fast API is set up once (predict
    type, one thread, float64 columns) and then costs a few microseconds. It is not thread-safe, hence the lock.
    Unavailable (another LightGBM build): `ready` is False and `Booster.predict` answers instead.
    """

    def __init__(self, booster: Any, n_features: int, n_trees: int) -> None:
        self.ready = False
        self._out = np.zeros(max(n_trees, 1), dtype=np.float64)
        self._row = np.zeros(n_features, dtype=np.float64)
        self._length = ctypes.c_int64(0)
        self._lock = threading.Lock()
        self._booster = booster  # keeps the handle alive as long as the fast config
        try:
            import lightgbm.basic

            self._lib = vars(lightgbm.basic)["_LIB"]  # LightGBM's loaded C library (ctypes.CDLL)
            self._config = ctypes.c_void_p()
            status = self._lib.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle, ctypes.c_int(2), ctypes.c_int(0), ctypes.c_int(-1),  # leaf index, all trees
                ctypes.c_int(1), ctypes.c_int32(n_features), ctypes.c_char_p(b"num_threads=1"),  # float64
                ctypes.byref(self._config),
            )  # fmt: skip
        except (ImportError, AttributeError, KeyError, OSError):
            return
        self.ready = status == 0

    def __call__(self, row: np.ndarray) -> np.ndarray:
        with self._lock:
            self._row[:] = row
            status = self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                self._config,
                self._row.ctypes.data_as(ctypes.c_void_p),
                ctypes.byref(self._length),
                self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            )
            if status != 0:
                raise RuntimeError(f"LightGBM single-row leaf prediction failed ({status})")
            return self._out[: self._length.value].astype(np.int64)

    def __del__(self) -> None:
        if self.ready:
            with contextlib.suppress(Exception):
                self._lib.LGBM_FastConfigFree(self._config)


def _node_mean(node: dict[str, Any]) -> tuple[float, float]:
    """(cover-weighted mean of the node's leaf values, its cover): the node's expected value, as TreeSHAP's."""
    if "leaf_index" in node:
        return float(node["leaf_value"]), float(node.get("leaf_count", 0))
    left_mean, left_cover = _node_mean(node["left_child"])
    right_mean, right_cover = _node_mean(node["right_child"])
    cover = left_cover + right_cover
    if cover <= 0:
        return (left_mean + right_mean) / 2, 0.0
    return (left_mean * left_cover + right_mean * right_cover) / cover, cover


def _fill_lightgbm(node: dict[str, Any], table: np.ndarray, path: np.ndarray, mean: float | None) -> None:
    """Walk a tree, carrying the contributions of the path so far; at each leaf, write them as its table row."""
    if mean is None:  # the root: its expected value is the tree's bias
        mean = _node_mean(node)[0]
        path = path.copy()
        path[-1] = mean
    if "leaf_index" in node:
        table[int(node["leaf_index"])] = path
        return
    feature = int(node["split_feature"])
    for child in (node["left_child"], node["right_child"]):
        child_mean = _node_mean(child)[0]
        step = path.copy()
        step[feature] += child_mean - mean
        _fill_lightgbm(child, table, step, child_mean)


class XGBoostPathExplainer:
    """XGBoost's own decision-path contributions (`approx_contribs`), through the native runtime's boosters."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        self.runtime = XGBoostRuntime(path, threads)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        return self.runtime.contributions(rows, approximate=True)


class RuntimeExplainer:
    """TreeSHAP through the runtime's own `contributions` (the framework's `pred_contrib`)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.runtime.contributions(rows))


def make_explainer(method: ReasonsMethod, flavor: Flavor, path: Path, runtime: Any, threads: int = 0) -> Explainer:
    """The explainer for a model file; `path` falls back to TreeSHAP (and says why) when it cannot be built."""
    if method is ReasonsMethod.shap:
        return RuntimeExplainer(runtime)
    try:
        if flavor is Flavor.lightgbm:
            return LightGBMPathExplainer(path, threads)
        return XGBoostPathExplainer(path, threads)
    except (ImportError, ValueError, OSError, json.JSONDecodeError) as exc:
        log.warning("decision-path reasons unavailable; using TreeSHAP", extra={"model": str(path), "error": str(exc)})
        return RuntimeExplainer(runtime)
