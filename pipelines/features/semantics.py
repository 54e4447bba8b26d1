"""The meaning of each window function for one entity at one instant, as plain Python.

This is the definition a reader checks against SPEC; it is obviously correct rather than fast. The offline
pipeline compiles the same declarations to SQL (`pipelines.offline.sql`) and is tested value for value against this
module; the streaming pipeline evaluates features with it over the entity's recent events.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipelines.features.catalog import Agg, WindowFeature


@dataclass(frozen=True)
class Event:
    """A transaction event as features read it: its id, its time (epoch milliseconds, UTC) and its fields by name
    (SPEC's and any extra declared ones; a missing field reads as null)."""

    transaction_id: str
    ts_ms: int
    fields: Mapping[str, Any] = field(default_factory=dict)

    def get(self, column: str) -> Any:
        return self.fields.get(column)


@dataclass(frozen=True)
class Label:
    """A verdict on a transaction, known from `ts_ms` on."""

    transaction_id: str
    is_fraud: bool
    ts_ms: int


def label_in_force(labels: Sequence[Label], t_ms: int) -> Label | None:
    """The verdict known at t: the latest label with ts <= t (on a tie, a fraud verdict wins)."""
    known = [label for label in labels if label.ts_ms <= t_ms]
    if not known:
        return None
    return max(known, key=lambda label: (label.ts_ms, label.is_fraud))


def evaluate(
    feature: WindowFeature,
    events: Iterable[Event],
    t_ms: int,
    labels: Mapping[str, Sequence[Label]] | None = None,
) -> int | float | None:
    """Value of `feature` at time `t_ms`, given the events of one entity (any order, later ones ignored)."""
    history = [e for e in events if e.ts_ms <= t_ms]
    if feature.agg is Agg.SECONDS_SINCE_PREV:
        earlier = [e.ts_ms for e in history if e.ts_ms < t_ms]
        return (t_ms - max(earlier)) / 1000.0 if earlier else None

    lower = t_ms - feature.window_ms  # exclusive
    window = [e for e in history if e.ts_ms > lower]
    column = feature.column
    if feature.agg is Agg.COUNT:
        return len(window) if column is None else sum(1 for e in window if e.get(column) is not None)
    if feature.agg is Agg.FRAUD_RATE:
        if not window:
            return 0.0
        by_txn = labels or {}
        fraud = 0
        for e in window:
            verdict = label_in_force(by_txn.get(e.transaction_id, ()), t_ms)
            fraud += verdict is not None and verdict.is_fraud
        return fraud / len(window)

    if column is None:
        raise ValueError(f"feature {feature.name} ({feature.agg}) needs a column")
    if feature.agg is Agg.DISTINCT:
        return len({e.get(column) for e in window if e.get(column) is not None})
    values = [float(v) for e in window if (v := e.get(column)) is not None]
    if feature.agg is Agg.SUM:
        return sum(values)
    if not values:
        return None
    if feature.agg is Agg.MEAN:
        return sum(values) / len(values)
    if feature.agg is Agg.MIN:
        return min(values)
    if feature.agg is Agg.MAX:
        return max(values)
    raise ValueError(f"unknown aggregation {feature.agg}")
