"""Reasons for a score: per-feature contributions to its log-odds, by decision path (fast) or TreeSHAP (exact).

Two methods, both additive (the contributions plus the bias column sum to the model's raw margin):

- `path`: each tree's decision path credits the split feature of every node it passes with the change in the
  node's expected value (Saabas; XGBoost's `approx_contribs`). For LightGBM this is precomputed once per model:
  every leaf's path gives one row of contributions, so a row's reasons are its leaves' rows of that table, summed:
  with the model compiled, in C by the compiled walk (about a prediction's cost); else by LightGBM's `pred_leaf`
  and a gather. Node expected values are cover-weighted means of
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

from core.models.compiled import CompiledRuntime, NodeTable
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
    """Decision-path contributions for a LightGBM model: a row's leaves and a table row per leaf, summed.

    With the model compiled (`runtime` a `CompiledRuntime`), the compiled library walks the trees as it does to
    predict and adds each leaf's sparse table row in C (`CompiledRuntime.sum_leaves`): no `pred_leaf` call and no
    (rows, trees, features) gather. That is checked at load against `pred_leaf` and the gather on probe rows, and
    the native way answers whenever the compiled one is unavailable or disagrees. Both sum the trees in the
    model's order from 0, so they give the same numbers, bit for bit.
    """

    def __init__(self, path: Path, threads: int = 0, runtime: Any = None) -> None:
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
        self.compiled: Any = None  # the CompiledRuntime whose walk finds the leaves, when it serves this model
        self.node_table: NodeTable | None = None
        if runtime is not None and isinstance(runtime, CompiledRuntime):
            try:
                self.node_table = _node_table(runtime, trees, self.offsets, self.table)
                self.compiled = runtime
                self._check_compiled(_probe_rows(trees, n_features))
            except ValueError as exc:
                self.compiled, self.node_table = None, None
                log.warning(
                    "reasons use LightGBM's pred_leaf: the compiled walk cannot serve them: %s",
                    exc,
                    extra={"model": str(path), "reason": str(exc)},
                )

    def leaves(self, rows: np.ndarray) -> np.ndarray:
        """Each row's leaf index in every tree, (rows, trees)."""
        if rows.shape[0] == 1 and self._single.ready:
            return self._single(rows[0])[None, :]
        threads = 1 if rows.shape[0] <= SINGLE_THREAD_ROWS else self.threads
        leaves = np.asarray(self.booster.predict(rows, pred_leaf=True, num_threads=threads), dtype=np.int64)
        return leaves.reshape(rows.shape[0], -1)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        if self.compiled is not None and self.node_table is not None:
            summed: np.ndarray = self.compiled.sum_leaves(rows, self.node_table)
            return summed
        return self.gathered(rows)

    def predict_and_explain(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(the model's predictions, `contributions(rows)`) from one walk of the compiled trees, equal to the two
        calls' results; None when the compiled walk does not serve this model (then call both)."""
        if self.compiled is None or self.node_table is None:
            return None
        both: tuple[np.ndarray, np.ndarray] = self.compiled.predict_and_sum_leaves(rows, self.node_table)
        return both

    def gathered(self, rows: np.ndarray) -> np.ndarray:
        """The contributions by LightGBM's leaves and a (rows, trees, features) gather: the reference way."""
        result: np.ndarray = self.table[self.leaves(rows) + self.offsets].sum(axis=1)
        return result

    def _check_compiled(self, rows: np.ndarray) -> None:
        """The compiled walk's sums equal the reference way's, exactly, on `rows` (else ValueError)."""
        assert self.compiled is not None and self.node_table is not None
        expected, got = self.gathered(rows), self.compiled.sum_leaves(rows, self.node_table)
        if not np.array_equal(expected, got):
            differ = int(np.count_nonzero(np.any(expected != got, axis=1)))
            raise ValueError(f"the compiled walk's contributions differ from pred_leaf's on {differ} probe rows")


def _node_table(
    runtime: CompiledRuntime, trees: list[dict[str, Any]], offsets: np.ndarray, table: np.ndarray
) -> NodeTable:
    """The leaf table indexed by the compiled library's nodes: each LightGBM tree walked beside its compiled copy
    (same shape, left child first), each leaf's nonzero contributions stored sparse at its compiled node."""
    left, roots = runtime.layout()
    if len(roots) != len(trees):
        raise ValueError(f"the compiled model has {len(roots)} trees, the model file {len(trees)}")
    row_of_node = np.full(len(left), -1, dtype=np.int64)
    for t, tree in enumerate(trees):
        stack = [(int(roots[t]), tree["tree_structure"])]
        while stack:
            at, node = stack.pop()
            is_leaf = "split_feature" not in node
            if is_leaf != (left[at] == at):
                raise ValueError(f"tree {t}'s compiled layout does not follow the model file's")
            if is_leaf:
                row_of_node[at] = offsets[t] + int(node.get("leaf_index", 0))
            else:
                stack += [(int(left[at]), node["left_child"]), (int(left[at]) + 1, node["right_child"])]
    dense = np.where(row_of_node[:, None] >= 0, table[np.maximum(row_of_node, 0)], 0.0)
    nonzero = dense != 0.0
    return NodeTable(
        start=np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))]).astype(np.int64),
        column=np.nonzero(nonzero)[1].astype(np.int32),
        value=np.ascontiguousarray(dense[nonzero], dtype=np.float64),
        width=table.shape[1],
    )


def _probe_rows(trees: list[dict[str, Any]], n_features: int, rows: int = 512, seed: int = 0) -> np.ndarray:
    """Rows on, just below and just above every threshold of the model, with zeros and NaNs mixed in."""
    cuts: list[list[float]] = [[0.0, 1.0, -1.0, np.inf, -np.inf] for _ in range(n_features)]
    stack = [tree["tree_structure"] for tree in trees]
    while stack:
        node = stack.pop()
        if "split_feature" in node:
            threshold = float(node["threshold"])
            cuts[int(node["split_feature"])] += [
                threshold,
                np.nextafter(threshold, np.inf),
                np.nextafter(threshold, -np.inf),
            ]
            stack += [node["left_child"], node["right_child"]]
    rng = np.random.default_rng(seed)
    out = np.column_stack([rng.choice(np.array(values), size=rows) for values in cuts])
    out[rng.random(out.shape) < 0.1] = np.nan
    return np.ascontiguousarray(out, dtype=np.float64)


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
            return LightGBMPathExplainer(path, threads, runtime)
        return XGBoostPathExplainer(path, threads)
    except (ImportError, ValueError, OSError, json.JSONDecodeError) as exc:
        log.warning("decision-path reasons unavailable; using TreeSHAP", extra={"model": str(path), "error": str(exc)})
        return RuntimeExplainer(runtime)
