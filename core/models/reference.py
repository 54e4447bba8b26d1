"""Drift reference: per-feature (and score) bins and proportions at training time, and PSI against served traffic.

A distribution is kept as its interior cut points (deciles of the training values, duplicates merged, so a feature
with few distinct values gets one bin per value range) and the share of values in each bin, plus the share of
nulls as a bin of its own. Bin i holds `edges[i-1] <= x < edges[i]` (the first from minus infinity, the last to
plus infinity), so served values outside the training range land in the end bins.

PSI = sum over bins (actual - expected) * ln(actual / expected), with each share floored at `FLOOR` so that an
empty bin counts as very unlikely rather than impossible. The usual reading: < 0.1 stable, 0.1-0.2 moderate,
>= 0.2 a significant shift (`FLAG`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

QUANTILES = tuple(i / 10 for i in range(1, 10))
FLOOR = 1e-4
FLAG = 0.2


class Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    edges: list[float]  # interior cut points, increasing
    proportions: list[float]  # len(edges) + 1 shares of the non-null values
    null: float = Field(default=0.0, ge=0.0, le=1.0)  # share of nulls among all values
    rows: int = Field(ge=0)


class DriftReference(BaseModel):
    """What served traffic is compared with: the training set's distributions, kept in the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str  # where the values came from, e.g. "training set (all splits)"
    score: Distribution | None = None  # the model's scores on the held-out rows
    features: dict[str, Distribution]


def distribution(values: np.ndarray) -> Distribution:
    """Bins from `values` (NaN: null) and the share of values in each."""
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    null = 1.0 - len(present) / len(values) if len(values) else 0.0
    if not len(present):
        return Distribution(edges=[], proportions=[1.0], null=null, rows=len(values))
    edges = np.unique(np.quantile(present, QUANTILES))
    edges = edges[edges > present.min()]  # no empty first bin below the minimum
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return Distribution(
        edges=[float(e) for e in edges],
        proportions=[float(c) / len(present) for c in counts],
        null=null,
        rows=len(values),
    )


def bin_counts(reference: Distribution, values: np.ndarray) -> tuple[np.ndarray, int]:
    """How many of `values` fall in each of the reference's bins, and how many are null (NaN)."""
    values = np.asarray(values, dtype=np.float64)
    nulls = np.isnan(values)
    present = values[~nulls] if nulls.any() else values
    counts = np.bincount(
        np.searchsorted(np.asarray(reference.edges, dtype=np.float64), present, side="right"),
        minlength=len(reference.edges) + 1,
    )
    return counts, int(nulls.sum())


def psi_of_counts(reference: Distribution, counts: np.ndarray, nulls: int) -> float | None:
    """PSI of served values given as counts per reference bin and a null count; None without values."""
    total = int(counts.sum()) + nulls
    if not total:
        return None
    expected = [p * (1 - reference.null) for p in reference.proportions] + [reference.null]
    actual = [float(c) / total for c in counts] + [nulls / total]
    return psi_of_shares(expected, actual)


def psi(reference: Distribution, values: np.ndarray) -> float | None:
    """PSI of `values` against `reference`; nulls are a bin of their own. None without values."""
    return psi_of_counts(reference, *bin_counts(reference, values))


def psi_of_shares(expected: list[float], actual: list[float]) -> float:
    total = 0.0
    for expected_share, actual_share in zip(expected, actual, strict=True):
        if expected_share == 0.0 and actual_share == 0.0:
            continue
        e, a = max(expected_share, FLOOR), max(actual_share, FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def reference_of(columns: Mapping[str, np.ndarray], scores: np.ndarray | None, source: str) -> DriftReference:
    """The reference of a training set: each feature's column (NaN: null) and the model's held-out scores."""
    return DriftReference(
        source=source,
        score=None if scores is None else distribution(scores),
        features={name: distribution(values) for name, values in columns.items()},
    )
