"""Tree models compiled to C for the CPU: one shared library per model, built once and cached by content.

Why not the framework's own predict: one row through LightGBM's or XGBoost's Python API costs tens of
microseconds of set-up around a few microseconds of trees. Why not tl2cgen's generated if/else code: measured here
on the 384-tree LightGBM model of bench/gpu_models, its 2 MB of branches ran a row in 14-22 us (instruction
cache and branch mispredictions), only 3-4x native. What this module generates instead:

- the trees, read exactly by Treelite (thresholds and leaf values as C hex literals: no decimal rounding), as a
  constant node table in the library: each node holds its threshold, the input slot it reads and its left child;
  the right child is the next node, taken when `slot <op> threshold`. Each feature has four slots per row: the
  value with NaN replaced by -inf, by +inf, and NaN/not-NaN flags; a node whose missing values go right reads the
  copy where NaN compares to the right side of its threshold, so the missing-value direction costs no extra
  instruction (the flags serve splits whose threshold is infinite). A leaf points to itself and reads an
  always-NaN slot, so every tree can take the same number of steps;
- a branch-free traversal that walks a block of 16 trees at once (independent loads overlap instead of waiting on
  each other), trees grouped by depth so the fixed step count wastes little; leaf values are then added to the
  base score in the model's tree order and the link function applied in the model's own precision, as LightGBM
  (double) and XGBoost (float, features cast to float first) do. Outputs equal the native ones, bit for bit on
  bench/gpu_models (tests/unit/test_compiled.py, bench/model.py).

The library is compiled with the system C compiler at first use (1-3 s for 400 trees), checked against the native
library on probe rows around every threshold (NaNs included), and cached under a content address: the model
file's sha256, the generator version, Treelite's version, the compiler flags and the CPU architecture. Builds are
atomic (temporary file, then rename, under a file lock) so API workers starting together build it once. A library
is loaded only from a private cache directory (owned by this user, not writable by others), only under the name its
own key gives, and only when its sha256 matches the record the build wrote next to it.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np

from core.models.manifest import Flavor

log = logging.getLogger("fraudserve.models")

# Bump when the generated C or the way tables are read changes: it is part of every cache key.
GENERATOR_VERSION = "8"
CFLAGS = ("-O3", "-fPIC", "-shared", "-std=gnu99")
# Trees walked together: independent load chains overlap. 16 measured 10-15 % faster than 8 here, 24 slower.
BLOCK = 16
# Rows walked through each block of trees before the next block (the block's nodes stay in L1 meanwhile).
CHUNK = 32
# Bytes of C stack a chunk's buffers may take (threads that call in have at least 8 MiB, often less elsewhere).
STACK_BUDGET = 256 * 1024
# A batch at least this large is split across threads; below it, thread hand-off costs more than it saves.
PARALLEL_MIN_ROWS = 2048
# Compiled and native predictions must agree to this on the probe rows, or the compiled library is not used.
TOLERANCE = 1e-6
PROBE_ROWS = 1024

_TREELITE_LEAF, _TREELITE_NUMERICAL = 0, 1
# LightGBM reads a dense row as sparse pairs and drops |x| <= kZeroThreshold (1e-35f, as a double): such values
# are predicted as 0, which Treelite does not model. The probe rows found it (a split at -1e-35).
LIGHTGBM_ZERO_THRESHOLD = float(np.float32(1e-35))
# Treelite's comparison operators, and for each the C operator that is true when a (non-NaN) value goes right.
_GOES_RIGHT = {2: ">=", 3: ">", 4: "<=", 5: "<"}  # kLT, kLE, kGT, kGE


class CompileError(RuntimeError):
    """Compiled code cannot be built or used for this model here; the native library serves it instead."""


class NoCompiler(CompileError):
    """No C compiler here (and no earlier build of this model in the cache)."""


@dataclass(frozen=True)
class Forest:
    """A binary classifier's trees as flat tables in the compiled layout (children adjacent, leaves self-loops)."""

    num_feature: int
    num_tree: int
    value_type: str  # "float64" (LightGBM) or "float32" (XGBoost): thresholds, features and leaf values
    goes_right: str  # C comparison operator: value <op> threshold sends a non-missing value right
    postprocessor: str  # "sigmoid" or "identity"
    sigmoid_alpha: float
    base_score: float
    zero_threshold: float  # inputs with |x| <= this are read as 0 (LightGBM's kZeroThreshold; 0 for XGBoost)
    threshold: np.ndarray  # per node: the split threshold, or the leaf value for a leaf
    left: np.ndarray  # per node: left child (right child = left + 1); a leaf's own index
    feature: np.ndarray  # per node: split feature; num_feature for a leaf
    nan_right: np.ndarray  # per node: 1 when a missing value goes right
    slot: np.ndarray  # per node: the input slot read (4 per feature, see `_choose_slots`; 4 * num_feature: NaN)
    compared: np.ndarray  # per node: the threshold compared with the slot (the leaf value for a leaf)
    roots: np.ndarray  # per tree, in walking order (grouped by depth, padded to BLOCK with a zero leaf)
    tree_of_slot: np.ndarray  # per walking slot: the tree's position in model order (num_tree for padding)
    group_depth: np.ndarray  # per block of BLOCK slots: steps needed by its deepest tree


def read_forest(flavor: Flavor, path: Path) -> Forest:
    """The model's trees through Treelite's exact field accessors; CompileError for what the kernel cannot run."""
    try:
        import treelite
    except ImportError as exc:
        raise CompileError("treelite is not installed") from exc
    if flavor is Flavor.lightgbm:
        _refuse_zero_as_missing(path)
    try:
        model = (
            treelite.frontend.load_lightgbm_model(path)
            if flavor is Flavor.lightgbm
            else treelite.frontend.load_xgboost_model(path)
        )
    except Exception as exc:  # Treelite raises its own error type for any file it cannot read
        raise CompileError(f"treelite cannot read {path.name}: {exc}") from exc
    header = model.get_header_accessor()

    def field(name: str) -> np.ndarray:
        return np.asarray(header.get_field(name))

    num_feature = int(field("num_feature")[0])
    if int(field("num_target")[0]) != 1 or int(field("num_class")[0]) != 1 or int(field("average_tree_output")[0]):
        raise CompileError("only single-output boosted binary classifiers are compiled")
    postprocessor = str(header.get_field("postprocessor"))
    if postprocessor not in {"sigmoid", "identity"}:
        raise CompileError(f"link function {postprocessor!r} is not compiled")
    if model.input_type != model.output_type or model.input_type not in {"float64", "float32"}:
        raise CompileError(f"threshold type {model.input_type} and leaf type {model.output_type} are not supported")
    base_scores = field("base_scores")
    nodes: list[tuple[float, int, int, int]] = []  # threshold/leaf value, left, feature, nan_right
    roots: list[int] = []
    depths: list[int] = []
    operators: set[int] = set()
    for t in range(model.num_tree):
        tree = model.get_tree_accessor(t)
        if int(np.asarray(tree.get_field("has_categorical_split"))[0]):
            raise CompileError("categorical splits are not compiled")
        kind = np.asarray(tree.get_field("node_type"))
        if np.any((kind != _TREELITE_LEAF) & (kind != _TREELITE_NUMERICAL)):
            raise CompileError("only numerical splits are compiled")
        if np.asarray(tree.get_field("leaf_vector")).size:
            raise CompileError("vector leaves are not compiled")
        cmp = np.asarray(tree.get_field("cmp"))
        operators.update(int(c) for c in cmp[kind == _TREELITE_NUMERICAL])
        root, depth = _lay_out_tree(
            nodes,
            left=np.asarray(tree.get_field("cleft")),
            right=np.asarray(tree.get_field("cright")),
            split=np.asarray(tree.get_field("split_index")),
            default_left=np.asarray(tree.get_field("default_left")),
            threshold=np.asarray(tree.get_field("threshold"), dtype=np.float64),
            leaf=np.asarray(tree.get_field("leaf_value"), dtype=np.float64),
            kind=kind,
            num_feature=num_feature,
        )
        roots.append(root)
        depths.append(depth)
    if len(operators) > 1 or not operators <= _GOES_RIGHT.keys():
        raise CompileError(f"comparison operators {sorted(operators)} are not compiled (one of <, <=, >, >=)")
    operator = operators.pop() if operators else 3
    # Padding: one zero leaf that every padding slot walks to (it is never summed).
    pad = len(nodes)
    nodes.append((0.0, pad, num_feature, 0))
    order = sorted(range(model.num_tree), key=lambda i: depths[i])
    slots = order + [model.num_tree] * (-len(order) % BLOCK)
    table = np.array(nodes, dtype=[("t", "f8"), ("left", "i4"), ("feature", "i4"), ("nan_right", "i4")])
    dtype = np.float64 if model.input_type == "float64" else np.float32
    slot, compared = _choose_slots(table, num_feature, _GOES_RIGHT[operator], dtype)
    return Forest(
        num_feature=num_feature,
        num_tree=model.num_tree,
        value_type=model.input_type,
        goes_right=_GOES_RIGHT[operator],
        postprocessor=postprocessor,
        sigmoid_alpha=float(field("sigmoid_alpha")[0]),
        base_score=float(base_scores[0]) if base_scores.size else 0.0,
        zero_threshold=LIGHTGBM_ZERO_THRESHOLD if flavor is Flavor.lightgbm else 0.0,
        threshold=table["t"].copy(),
        left=table["left"].copy(),
        feature=table["feature"].copy(),
        nan_right=table["nan_right"].copy(),
        slot=slot,
        compared=compared,
        roots=np.array([roots[i] if i < model.num_tree else pad for i in slots], dtype=np.int32),
        tree_of_slot=np.array(slots, dtype=np.int32),
        group_depth=np.array(
            [
                max((depths[i] for i in slots[g : g + BLOCK] if i < model.num_tree), default=0)
                for g in range(0, len(slots), BLOCK)
            ],
            dtype=np.int32,
        ),
    )


def _lay_out_tree(
    nodes: list[tuple[float, int, int, int]],
    *,
    left: np.ndarray,
    right: np.ndarray,
    split: np.ndarray,
    default_left: np.ndarray,
    threshold: np.ndarray,
    leaf: np.ndarray,
    kind: np.ndarray,
    num_feature: int,
) -> tuple[int, int]:
    """Append one tree breadth-first with each node's two children next to each other; (root index, depth)."""
    root = len(nodes)
    queue: list[tuple[int, int]] = [(0, 0)]  # (Treelite node id, depth)
    placed = {0: root}
    nodes.append((0.0, 0, 0, 0))
    depth = 0
    while queue:
        node, level = queue.pop(0)
        at = placed[node]
        depth = max(depth, level)
        if kind[node] == _TREELITE_LEAF:
            nodes[at] = (float(leaf[node]), at, num_feature, 0)
            continue
        feature = int(split[node])
        if not 0 <= feature < num_feature or math.isnan(threshold[node]):
            raise CompileError(f"split on feature {feature} at threshold {threshold[node]} is out of range")
        first = len(nodes)
        nodes.extend([(0.0, 0, 0, 0), (0.0, 0, 0, 0)])
        placed[int(left[node])], placed[int(right[node])] = first, first + 1
        nodes[at] = (float(threshold[node]), first, feature, 0 if default_left[node] else 1)
        queue += [(int(left[node]), level + 1), (int(right[node]), level + 1)]
    return root, depth


_COMPARE = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal}
LOW, HIGH, IS_NAN, NOT_NAN = range(4)  # a feature's four slots: NaN as -inf, NaN as +inf, NaN flag, not-NaN flag


def _choose_slots(table: np.ndarray, num_feature: int, goes_right: str, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each node the slot (and threshold) that sends NaN its default way with one comparison.

    The -inf/+inf copies change nothing for non-missing values, so they keep the threshold; the one whose sentinel
    lands on the missing-value side is chosen. When neither does (an infinite threshold, where the sentinel ties),
    every non-missing value goes the same way, and a NaN flag compared with 0.5 reproduces the node.
    """
    compare = _COMPARE[goes_right]
    slots = np.full(len(table), 4 * num_feature, dtype=np.int32)
    compared = table["t"].astype(dtype).astype(np.float64)
    inf = dtype(np.inf)
    for i, (t, _, feature, nan_right) in enumerate(table.tolist()):
        if feature >= num_feature:
            continue  # a leaf: reads the NaN slot, which never compares true, and keeps its leaf value
        threshold, right = dtype(t), bool(nan_right)
        if bool(compare(-inf, threshold)) == right:
            slots[i] = 4 * feature + LOW
            continue
        if bool(compare(inf, threshold)) == right:
            slots[i] = 4 * feature + HIGH
            continue
        known = {bool(compare(dtype(v), threshold)) for v in (-np.inf, -1.0, 0.0, 1.0, np.inf)}
        if len(known) != 1:
            raise CompileError(f"no slot reproduces the split at {t} (missing values {'right' if right else 'left'})")
        others = known.pop()
        for flag, (if_nan, if_not) in ((IS_NAN, (1.0, 0.0)), (NOT_NAN, (0.0, 1.0))):
            if bool(compare(dtype(if_nan), dtype(0.5))) == right and bool(compare(dtype(if_not), dtype(0.5))) == others:
                slots[i], compared[i] = 4 * feature + flag, 0.5
                break
        else:
            raise CompileError(f"no slot reproduces the split at {t}")
    return slots, compared


def _refuse_zero_as_missing(path: Path) -> None:
    """LightGBM's zero_as_missing (missing type Zero: 0 also takes the default branch) has no Treelite equivalent."""
    with path.open("rb") as lines:
        for line in lines:
            if line.startswith(b"decision_type="):
                if any((int(v) >> 2) & 3 == 1 for v in line.split(b"=", 1)[1].split()):
                    raise CompileError("LightGBM zero_as_missing splits are not compiled")
            elif line.startswith(b"end of trees"):
                return


def _literal(value: float, c_type: str) -> str:
    """An exact C literal (hexadecimal float: no decimal rounding either way)."""
    if math.isinf(value):
        return "INFINITY" if value > 0 else "-INFINITY"
    suffix = "f" if c_type == "float" else ""
    return f"{value.hex()}{suffix}"


def _chunk_rows(forest: Forest) -> int:
    """Rows per chunk, fewer for very wide or very large models: the chunk's buffers live on the C stack."""
    value_size = 8 if forest.value_type == "float64" else 4
    per_row = (4 * forest.num_feature + 1) * value_size + (forest.num_tree + 1) * 4
    return max(1, min(CHUNK, STACK_BUDGET // per_row))


def c_source(forest: Forest) -> str:
    """The library's C: the node table and `fraudserve_predict(rows, n_rows, out)` over float64 rows."""
    c_type = "double" if forest.value_type == "float64" else "float"
    node_rows = ",\n".join(
        f"{{{_literal(float(t), c_type)},{left},{slot}}}"
        for t, left, slot in zip(forest.compared, forest.left.tolist(), forest.slot.tolist(), strict=True)
    )

    def ints(values: np.ndarray) -> str:
        return ",".join(str(v) for v in values.tolist())

    if forest.postprocessor == "sigmoid":
        exp = "exp" if c_type == "double" else "expf"
        one = "1.0" if c_type == "double" else "1.0f"
        link = f"{one} / ({one} + {exp}(-({_literal(forest.sigmoid_alpha, c_type)}) * margin))"
    else:
        link = "margin"
    return _TEMPLATE % {
        "value_t": c_type,
        "num_feature": forest.num_feature,
        "num_tree": forest.num_tree,
        "num_slot": len(forest.roots),
        "num_group": len(forest.group_depth),
        "block": BLOCK,
        "chunk": _chunk_rows(forest),
        "nodes": node_rows,
        "roots": ints(forest.roots),
        "tree_of_slot": ints(forest.tree_of_slot),
        "group_depth": ints(forest.group_depth),
        "goes_right": forest.goes_right,
        "base_score": _literal(forest.base_score, c_type),
        "zero_threshold": _literal(forest.zero_threshold, "double"),
        "link": link,
    }


_TEMPLATE = """\
/* Generated by fraudserve.models.compiled: do not edit. */
#include <math.h>
#include <stdint.h>

typedef %(value_t)s value_t;
struct node { value_t t; int32_t left; int32_t slot; };

#define NUM_FEATURE %(num_feature)d
#define NUM_TREE %(num_tree)d
#define NUM_SLOT %(num_slot)d
#define NUM_GROUP %(num_group)d
#define BLOCK %(block)d
#define CHUNK %(chunk)d
#define ZERO_THRESHOLD %(zero_threshold)s

static const struct node NODES[] = {
%(nodes)s
};
static const int32_t ROOTS[NUM_SLOT] = {%(roots)s};
static const int32_t TREE_OF_SLOT[NUM_SLOT] = {%(tree_of_slot)s};
static const int32_t GROUP_DEPTH[NUM_GROUP] = {%(group_depth)s};

/* Rows in chunks: a block of trees stays in L1 while every row of the chunk walks it. leaf[r][i]: the node where
   row r ends in tree i (the model's order). */
static void walk_chunk(const double* rows, int m, int32_t leaf[][NUM_TREE + 1]) {
  value_t x[CHUNK][4 * NUM_FEATURE + 1];
  for (int r = 0; r < m; ++r) {
    for (int j = 0; j < NUM_FEATURE; ++j) {
      const double raw = rows[r * NUM_FEATURE + j];
      const value_t v = fabs(raw) <= ZERO_THRESHOLD ? (value_t)0 : (value_t)raw;
      const int missing = v != v;
      x[r][4 * j] = missing ? -INFINITY : v;
      x[r][4 * j + 1] = missing ? INFINITY : v;
      x[r][4 * j + 2] = (value_t)missing;
      x[r][4 * j + 3] = (value_t)!missing;
    }
    x[r][4 * NUM_FEATURE] = (value_t)NAN;  /* what every leaf reads: leaves point to themselves */
  }
  for (int g = 0; g < NUM_GROUP; ++g) {
    const int depth = GROUP_DEPTH[g];
    for (int r = 0; r < m; ++r) {
      const value_t* v_row = x[r];
      int32_t at[BLOCK];
      for (int k = 0; k < BLOCK; ++k) at[k] = ROOTS[g * BLOCK + k];
      for (int step = depth; step > 0; --step) {
        for (int k = 0; k < BLOCK; ++k) {
          const struct node* n = &NODES[at[k]];
          at[k] = n->left + (v_row[n->slot] %(goes_right)s n->t);
        }
      }
      for (int k = 0; k < BLOCK; ++k) leaf[r][TREE_OF_SLOT[g * BLOCK + k]] = at[k];
    }
  }
}

/* A row's prediction from its leaves: the base score first, then the trees in the model's order (XGBoost's float
   sum, LightGBM's with base 0). */
static double score_of(const int32_t* leaf) {
  value_t margin = %(base_score)s;
  for (int i = 0; i < NUM_TREE; ++i) margin += NODES[leaf[i]].t;
  return (double)(%(link)s);
}

static void score_chunk(const double* rows, int m, double* out) {
  int32_t leaf[CHUNK][NUM_TREE + 1];
  walk_chunk(rows, m, leaf);
  for (int r = 0; r < m; ++r) out[r] = score_of(leaf[r]);
}

/* Each chunk row's sum over trees (the model's order) of a per-node sparse row (CSR: start, column, value) at its
   leaves, into out (m x width). Trees outside, rows inside: the rows of a chunk reach the same few leaves of a tree,
   so its table rows are read from cache once for all of them instead of once per row across the whole table; each
   cell still sums its terms in tree order from 0 (the same additions in the same order as row by row). */
static void sum_chunk(int32_t leaf[][NUM_TREE + 1], int m, const int64_t* start, const int32_t* column,
                      const double* value, int64_t width, double* out) {
  for (int64_t k = 0; k < (int64_t)m * width; ++k) out[k] = 0.0;
  for (int t = 0; t < NUM_TREE; ++t) {
    for (int r = 0; r < m; ++r) {
      const int32_t node = leaf[r][t];
      double* o = out + r * width;
      for (int64_t j = start[node]; j < start[node + 1]; ++j) o[column[j]] += value[j];
    }
  }
}

int32_t fraudserve_num_feature(void) { return NUM_FEATURE; }
int32_t fraudserve_num_tree(void) { return NUM_TREE; }
int32_t fraudserve_num_node(void) { return (int32_t)(sizeof(NODES) / sizeof(NODES[0])); }

/* The layout, for tables indexed by node: each node's left child (itself for a leaf), each tree's root. */
void fraudserve_layout(int32_t* left, int32_t* root) {
  for (int32_t i = 0; i < fraudserve_num_node(); ++i) left[i] = NODES[i].left;
  for (int s = 0; s < NUM_SLOT; ++s) if (TREE_OF_SLOT[s] < NUM_TREE) root[TREE_OF_SLOT[s]] = ROOTS[s];
}

void fraudserve_predict_one(const double* row, double* out) { score_chunk(row, 1, out); }

void fraudserve_predict(const double* rows, int64_t n_rows, double* out) {
  for (int64_t i = 0; i < n_rows; i += CHUNK) {
    const int m = n_rows - i < CHUNK ? (int)(n_rows - i) : CHUNK;
    score_chunk(rows + i * NUM_FEATURE, m, out + i);
  }
}

/* Each row's leaf (node index) in every tree, the model's order: out is n_rows x NUM_TREE. */
void fraudserve_leaves(const double* rows, int64_t n_rows, int32_t* out) {
  int32_t leaf[CHUNK][NUM_TREE + 1];
  for (int64_t i = 0; i < n_rows; i += CHUNK) {
    const int m = n_rows - i < CHUNK ? (int)(n_rows - i) : CHUNK;
    walk_chunk(rows + i * NUM_FEATURE, m, leaf);
    for (int r = 0; r < m; ++r)
      for (int t = 0; t < NUM_TREE; ++t) out[(i + r) * NUM_TREE + t] = leaf[r][t];
  }
}

/* For each row, the sum over trees (the model's order) of a per-node sparse row (CSR: start, column, value) at the
   leaf it reaches; out is n_rows x width, each cell summed from 0 in tree order. */
void fraudserve_sum_leaves(const double* rows, int64_t n_rows, const int64_t* start, const int32_t* column,
                           const double* value, int64_t width, double* out) {
  int32_t leaf[CHUNK][NUM_TREE + 1];
  for (int64_t i = 0; i < n_rows; i += CHUNK) {
    const int m = n_rows - i < CHUNK ? (int)(n_rows - i) : CHUNK;
    walk_chunk(rows + i * NUM_FEATURE, m, leaf);
    sum_chunk(leaf, m, start, column, value, width, out + i * width);
  }
}

/* fraudserve_predict and fraudserve_sum_leaves from one walk: each row's prediction in scores, its sums in out. */
void fraudserve_predict_and_sum_leaves(const double* rows, int64_t n_rows, const int64_t* start,
                                       const int32_t* column, const double* value, int64_t width, double* scores,
                                       double* out) {
  int32_t leaf[CHUNK][NUM_TREE + 1];
  for (int64_t i = 0; i < n_rows; i += CHUNK) {
    const int m = n_rows - i < CHUNK ? (int)(n_rows - i) : CHUNK;
    walk_chunk(rows + i * NUM_FEATURE, m, leaf);
    for (int r = 0; r < m; ++r) scores[i + r] = score_of(leaf[r]);
    sum_chunk(leaf, m, start, column, value, width, out + i * width);
  }
}
"""


# ------------------------------------------------------------------------------------------------ the cache


def default_cache_dir() -> Path:
    """Private per-user cache (not the registry's folders: those may be read-only or shared)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fraudserve" / "compiled"


def find_compiler(compiler: str | None = None) -> list[str]:
    """The C compiler command: the argument, else FRAUDSERVE_CC, else CC, else cc/gcc/clang on PATH."""
    chosen = compiler or os.environ.get("FRAUDSERVE_CC") or os.environ.get("CC")
    if chosen:
        command = shlex.split(chosen)
        if shutil.which(command[0]) is None:
            raise NoCompiler(f"C compiler {command[0]!r} not found")
        return command
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    raise NoCompiler("no C compiler (cc, gcc or clang) on PATH; set FRAUDSERVE_CC or install one")


def _treelite_version() -> str:
    try:
        return metadata.version("treelite")
    except metadata.PackageNotFoundError:
        return "none"


def cache_key(model_sha256: str) -> str:
    """Everything the library's bytes depend on besides the compiler itself."""
    parts = {
        "model": model_sha256,
        "generator": GENERATOR_VERSION,
        "treelite": _treelite_version(),
        "cflags": CFLAGS,
        "machine": platform.machine(),
        "system": platform.system(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _private_dir(cache_dir: Path) -> Path:
    """Create the cache directory 0700, or check that an existing one is ours and closed to others."""
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = cache_dir.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CompileError(f"cache directory {cache_dir} is not private to this user; not loading code from it")
    return cache_dir


def _trusted_library(library: Path, record: Path) -> dict[str, Any] | None:
    """The build record when `library` is the file this cache built (owner, permissions, sha256); else None."""
    if not (library.is_file() and record.is_file()):
        return None
    info = library.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    try:
        built: dict[str, Any] = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    return built if built.get("library_sha256") == _sha256(library) else None


@dataclass(frozen=True)
class Build:
    library: Path
    record: dict[str, Any]
    built_now: bool
    native: Any = None  # the native runtime the build was checked against (reused rather than loaded again)


def build_library(
    flavor: Flavor, path: Path, cache_dir: Path | None = None, compiler: str | None = None, threads: int = 0
) -> Build:
    """The compiled library for a model file: from the cache, else generated, compiled, checked and cached.

    Every failure here (no compiler, an unwritable or noexec cache, a model the kernel does not cover) is a
    CompileError, which `load_runtime` answers with the native library.
    """
    try:
        return _build_library(flavor, path, cache_dir, compiler, threads)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompileError(f"building compiled code failed: {exc}") from exc


def _build_library(flavor: Flavor, path: Path, cache_dir: Path | None, compiler: str | None, threads: int) -> Build:
    directory = _private_dir(cache_dir or default_cache_dir())
    model_sha256 = _sha256(path)
    key = cache_key(model_sha256)
    library, record_path = directory / f"{flavor.value}-{key}.so", directory / f"{flavor.value}-{key}.json"
    record = _trusted_library(library, record_path)
    if record is not None:
        return Build(library, record, built_now=False)
    with (directory / f"{flavor.value}-{key}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building the same key: wait, then reuse its build
        try:
            record = _trusted_library(library, record_path)
            if record is not None:
                return Build(library, record, built_now=False)
            command = find_compiler(compiler)
            forest = read_forest(flavor, path)
            with tempfile.TemporaryDirectory(dir=directory, prefix="build-") as tmp:
                source, built = Path(tmp) / "model.c", Path(tmp) / "model.so"
                source.write_text(c_source(forest))
                done = subprocess.run(
                    [*command, *CFLAGS, "-o", str(built), str(source), "-lm"],
                    capture_output=True, text=True, check=False, timeout=600,
                )  # fmt: skip
                if done.returncode != 0:
                    raise CompileError(f"{command[0]} failed: {done.stderr.strip()[-2000:]}")
                built.chmod(0o700)
                native = _native_runtime(flavor, path, threads)
                max_diff = _check_against_native(native, built, forest)
                record = {
                    "model_sha256": model_sha256,
                    "model_file": path.name,
                    "flavor": flavor.value,
                    "num_feature": forest.num_feature,
                    "num_tree": forest.num_tree,
                    "generator": GENERATOR_VERSION,
                    "treelite": _treelite_version(),
                    "compiler": command,
                    "cflags": list(CFLAGS),
                    "probe_max_abs_diff": max_diff,
                    "library_sha256": _sha256(built),
                }
                staged = Path(tmp) / "record.json"
                staged.write_text(json.dumps(record, indent=2))
                os.replace(built, library)  # atomic: a reader sees no library or the whole one
                os.replace(staged, record_path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return Build(library, record, built_now=True, native=native)


def probe_rows(forest: Forest, rows: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Rows whose values sit on, just below and just above the model's thresholds, with zeros and NaNs mixed in."""
    rng = np.random.default_rng(seed)
    internal = forest.feature < forest.num_feature
    dtype = np.float64 if forest.value_type == "float64" else np.float32
    out = np.empty((rows, forest.num_feature))
    for j in range(forest.num_feature):
        cuts = forest.threshold[internal & (forest.feature == j)].astype(dtype)
        cuts = cuts[np.isfinite(cuts)]
        values = np.concatenate(
            [
                cuts,
                np.nextafter(cuts, dtype(np.inf)),
                np.nextafter(cuts, dtype(-np.inf)),
                np.array([0.0, -0.0, 1.0, -1.0, 1e-36, -1e-36, np.inf, -np.inf]),
            ]
        ).astype(np.float64)
        out[:, j] = rng.choice(values, size=rows)
    out[rng.random(out.shape) < 0.1] = np.nan
    return out


def _native_runtime(flavor: Flavor, path: Path, threads: int) -> Any:
    from core.models.runtime import LightGBMRuntime, XGBoostRuntime

    return LightGBMRuntime(path, threads) if flavor is Flavor.lightgbm else XGBoostRuntime(path, threads)


def _check_against_native(native: Any, library: Path, forest: Forest) -> float:
    """Compiled vs native on probe rows; CompileError beyond TOLERANCE (the library is then not cached)."""
    rows = probe_rows(forest)
    compiled = _Library(library, forest.num_feature).predict(rows)
    max_diff = float(np.max(np.abs(compiled - native.predict(rows)), initial=0.0))
    if not max_diff <= TOLERANCE:
        raise CompileError(f"compiled predictions differ from the native library's by {max_diff:.3g} on probe rows")
    return max_diff


@dataclass(frozen=True)
class NodeTable:
    """A sparse row of values per node of a compiled model (CSR: node i's are `column[start[i]:start[i + 1]]` and
    `value[...]`), `width` columns wide: what `CompiledRuntime.sum_leaves` adds up over the leaves a row reaches."""

    start: np.ndarray  # int64, one more than the nodes
    column: np.ndarray  # int32, each < width
    value: np.ndarray  # float64

    width: int

    def __post_init__(self) -> None:
        if self.start.dtype != np.int64 or self.column.dtype != np.int32 or self.value.dtype != np.float64:
            raise ValueError("a node table holds int64 starts, int32 columns and float64 values")
        if not all(a.ndim == 1 and a.flags.c_contiguous for a in (self.start, self.column, self.value)):
            raise ValueError("a node table's arrays must be one-dimensional and contiguous (the C code reads them)")
        if self.start[0] != 0 or self.start[-1] != len(self.column) or len(self.column) != len(self.value):
            raise ValueError("a node table's starts must run from 0 to its number of entries")
        if np.any(np.diff(self.start) < 0) or (
            len(self.column) and not 0 <= self.column.min() <= self.column.max() < self.width
        ):
            raise ValueError(f"a node table's columns must lie in [0, {self.width}) with starts in order")

    @property
    def num_node(self) -> int:
        return len(self.start) - 1

    @property
    def pointers(self) -> tuple[int, int, int]:
        return self.start.ctypes.data, self.column.ctypes.data, self.value.ctypes.data


_FLOAT64 = np.dtype(np.float64)
_OneDouble = ctypes.c_double * 1


class _Library:
    """The loaded shared library: `predict` over a C-contiguous float64 matrix with the model's column count."""

    def __init__(self, library: Path, num_feature: int) -> None:
        try:
            self.handle = ctypes.CDLL(str(library))
        except OSError as exc:  # e.g. a cache on a noexec mount
            raise CompileError(f"cannot load {library.name}: {exc}") from exc
        self.handle.fraudserve_num_feature.restype = ctypes.c_int32
        if self.handle.fraudserve_num_feature() != num_feature:
            raise CompileError(f"{library.name} was built for another feature count")
        self.num_feature = num_feature
        self.function = self.handle.fraudserve_predict
        self.function.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
        self.function.restype = None
        # One row: ctypes arrays over the NumPy buffers (a few hundred ns) instead of `.ctypes.data` (microseconds).
        self.one = self.handle.fraudserve_predict_one
        self.one.restype = None
        self.row_type = ctypes.c_double * num_feature
        self.row_shape = (1, num_feature)
        self.handle.fraudserve_num_tree.restype = ctypes.c_int32
        self.handle.fraudserve_num_node.restype = ctypes.c_int32
        self.num_tree = int(self.handle.fraudserve_num_tree())
        self.num_node = int(self.handle.fraudserve_num_node())
        self.leaves = self.handle.fraudserve_leaves
        self.leaves.argtypes = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p)
        self.leaves.restype = None
        self.sum_leaves = self.handle.fraudserve_sum_leaves
        self.sum_leaves.argtypes = (ctypes.c_void_p, ctypes.c_int64, *[ctypes.c_void_p] * 3, ctypes.c_int64)
        self.sum_leaves.argtypes += (ctypes.c_void_p,)
        self.sum_leaves.restype = None
        self.predict_and_sum_leaves = self.handle.fraudserve_predict_and_sum_leaves
        self.predict_and_sum_leaves.argtypes = (*self.sum_leaves.argtypes, ctypes.c_void_p)
        self.predict_and_sum_leaves.restype = None

    def predict(self, rows: np.ndarray) -> np.ndarray:
        rows = self.checked(rows)
        out = np.empty(rows.shape[0], dtype=np.float64)
        self.function(rows.ctypes.data, rows.shape[0], out.ctypes.data)  # ctypes releases the GIL for the call
        return out

    def checked(self, rows: np.ndarray) -> np.ndarray:
        """The C code reads num_feature float64 per row: anything else is converted or refused, never read past."""
        if rows.ndim != 2 or rows.shape[1] != self.num_feature:
            raise ValueError(f"expected a (rows, {self.num_feature}) matrix, got shape {rows.shape}")
        if rows.dtype != np.float64 or not rows.flags.c_contiguous:
            rows = np.ascontiguousarray(rows, dtype=np.float64)
        return rows


# ------------------------------------------------------------------------------------------------ the runtime


class CompiledRuntime:
    """Predictions by the compiled library; feature names and contributions (TreeSHAP) by the native library.

    One row (the API's case) is a direct call on the caller's thread. A batch is split across `threads` threads
    (0: all cores); each call into the library releases the GIL.
    """

    def __init__(
        self,
        flavor: Flavor,
        path: Path,
        threads: int = 0,
        *,
        cache_dir: Path | None = None,
        compiler: str | None = None,
    ) -> None:
        self.flavor, self.path = flavor, path
        self.native_threads, self.threads = threads, threads or os.cpu_count() or 1
        self.build = build_library(flavor, path, cache_dir, compiler, threads)
        self.library = _Library(self.build.library, int(self.build.record["num_feature"]))
        self._native: Any = self.build.native
        self._native_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    @property
    def native(self) -> Any:
        """The framework's own runtime, loaded on first use: only reasons and feature names need it."""
        with self._native_lock:
            if self._native is None:
                self._native = _native_runtime(self.flavor, self.path, self.native_threads)
            return self._native

    @property
    def feature_names(self) -> list[str]:
        return list(self.native.feature_names)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        library = self.library
        if rows.shape == library.row_shape and rows.dtype == _FLOAT64:
            try:
                row = library.row_type.from_buffer(cast(Any, rows))  # a writable C-contiguous buffer of that size
            except (TypeError, ValueError, BufferError):
                pass
            else:
                out = np.empty(1, dtype=np.float64)
                library.one(row, _OneDouble.from_buffer(cast(Any, out)))
                return out
        rows = library.checked(rows)
        n = rows.shape[0]
        out = np.empty(n, dtype=np.float64)
        if n < PARALLEL_MIN_ROWS or self.threads == 1:
            self.library.function(rows.ctypes.data, n, out.ctypes.data)
            return out
        pool = self._batch_pool()
        bounds = np.linspace(0, n, self.threads + 1, dtype=np.int64).tolist()
        base, target, width = rows.ctypes.data, out.ctypes.data, rows.shape[1] * 8
        calls = [
            pool.submit(self.library.function, base + lo * width, hi - lo, target + lo * 8)
            for lo, hi in itertools.pairwise(bounds)
            if hi > lo
        ]
        for call in calls:
            call.result()
        return out

    def layout(self) -> tuple[np.ndarray, np.ndarray]:
        """(left child of every node, a leaf's being itself; every tree's root node, in the model's order): what a
        table indexed by node (`NodeTable`) is built against. Right children are `left + 1`."""
        left = np.empty(self.library.num_node, dtype=np.int32)
        roots = np.empty(self.library.num_tree, dtype=np.int32)
        self.library.handle.fraudserve_layout(
            left.ctypes.data_as(ctypes.c_void_p), roots.ctypes.data_as(ctypes.c_void_p)
        )
        return left, roots

    def leaves(self, rows: np.ndarray) -> np.ndarray:
        """(rows, trees): the node each row ends at in every tree (indices of `layout`), by the prediction's walk."""
        rows = self.library.checked(rows)
        out = np.empty((rows.shape[0], self.library.num_tree), dtype=np.int32)
        self.library.leaves(rows.ctypes.data, rows.shape[0], out.ctypes.data)
        return out

    def sum_leaves(self, rows: np.ndarray, table: NodeTable) -> np.ndarray:
        """(rows, table.width): for each row, `table`'s rows at the leaves it reaches, summed in the model's tree
        order from 0 (one walk and the sums in C; no (rows, trees, width) array in between)."""
        if table.num_node != self.library.num_node:
            raise ValueError(f"a table of {table.num_node} nodes for a model of {self.library.num_node}")
        rows = self.library.checked(rows)
        n = rows.shape[0]
        out = np.empty((n, table.width), dtype=np.float64)
        call, pointers = self.library.sum_leaves, table.pointers
        if n < PARALLEL_MIN_ROWS or self.threads == 1:
            call(rows.ctypes.data, n, *pointers, table.width, out.ctypes.data)
            return out
        pool = self._batch_pool()
        bounds = np.linspace(0, n, self.threads + 1, dtype=np.int64).tolist()
        base, target, width, out_width = rows.ctypes.data, out.ctypes.data, rows.shape[1] * 8, table.width * 8
        calls = [
            pool.submit(call, base + lo * width, hi - lo, *pointers, table.width, target + lo * out_width)
            for lo, hi in itertools.pairwise(bounds)
            if hi > lo
        ]
        for done in calls:
            done.result()
        return out

    def predict_and_sum_leaves(self, rows: np.ndarray, table: NodeTable) -> tuple[np.ndarray, np.ndarray]:
        """`predict(rows)` and `sum_leaves(rows, table)` from one walk of the trees: the same numbers, bit for bit
        (the same C code sums them), at about the cost of one of the two."""
        if table.num_node != self.library.num_node:
            raise ValueError(f"a table of {table.num_node} nodes for a model of {self.library.num_node}")
        rows = self.library.checked(rows)
        n = rows.shape[0]
        scores = np.empty(n, dtype=np.float64)
        out = np.empty((n, table.width), dtype=np.float64)
        call, pointers = self.library.predict_and_sum_leaves, table.pointers
        if n < PARALLEL_MIN_ROWS or self.threads == 1:
            call(rows.ctypes.data, n, *pointers, table.width, scores.ctypes.data, out.ctypes.data)
            return scores, out
        pool = self._batch_pool()
        bounds = np.linspace(0, n, self.threads + 1, dtype=np.int64).tolist()
        base, width, out_width = rows.ctypes.data, rows.shape[1] * 8, table.width * 8
        calls = [
            pool.submit(call, base + lo * width, hi - lo, *pointers, table.width, scores.ctypes.data + lo * 8,
                        out.ctypes.data + lo * out_width)
            for lo, hi in itertools.pairwise(bounds)
            if hi > lo
        ]  # fmt: skip
        for done in calls:
            done.result()
        return scores, out

    def _batch_pool(self) -> ThreadPoolExecutor:
        """Threads for batches, started on first use and again in a forked child (threads do not survive a fork)."""
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fraudserve-compiled")
                self._pool_pid = os.getpid()
            return self._pool

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.native.contributions(rows))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
