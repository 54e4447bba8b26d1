"""The single score's own path: what the dynamic batcher calls for `POST /v1/fraud/score`.

A batch of the single score is 1 to a few requests by id, and `score_requests` (the general path: inline events,
the canary share drawn per request, shadow scoring, Feast's SDK, generic on-demand views) spends on that generality
as much CPU as the features, the model and the reasons together (`bench.hotpath`: 158 us for one id against 88 for
its stages). When none of that generality is in play (ids only, one version serving everything, a source that reads
a transaction with its features in one round trip, no generic on-demand view, no shadow), `score_singles` scores the
batch directly: one lookup, one model matrix (`build_rows`, the same function), one walk of the compiled trees for
the scores and the contributions (`predict_and_explain`, bit-equal to the two calls), the reasons picked by index,
and one label count per label instead of one metric call per score. Everything else, and any batch that needs
it, goes to `score_requests` unchanged. Each `Score` equals the one `score_requests` gives (tests/unit/
test_single_score.py compares them field by field on real transactions, reasons, labels and freshness included).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from core.errors import FraudserveError
from inference_api.domain.features import TransactionRecord
from inference_api.domain.models import LoadedModel
from inference_api.domain.scoring import (
    UNCERTAIN,
    Reason,
    Request,
    Score,
    ScoringService,
    TransactionNotFound,
    build_rows,
    score_requests,
)


def top_positions(contributions: list[float], count: int) -> list[int]:
    """The positions of the `count` largest contributions, largest first, ties in feature order: the order
    `np.argsort(-row, kind="stable")` gives (NaN last), which the general path uses too."""
    if any(map(math.isnan, contributions)):  # NaN sorts last in numpy, nowhere in particular in Python's sort
        top: list[int] = np.argsort(-np.asarray(contributions), kind="stable")[:count].tolist()
        return top
    return sorted(range(len(contributions)), key=contributions.__getitem__, reverse=True)[:count]


def plain(service: ScoringService, requests: Sequence[Request]) -> bool:
    """Whether this batch can take the single path: ids only, production serving everything (no candidate drawn
    for a canary share), no shadow scoring, a source that reads each transaction with its features in one round
    trip, and no generic on-demand view in the production plan (those read records through Feast's code)."""
    if service.shadow or not getattr(service.source, "fused", False):
        return False
    if service.canary_percent > 0 and service.models.candidate() is not None:
        return False
    return all(event is None and tid is not None for tid, event in requests)


async def score_singles(service: ScoringService, requests: Sequence[Request]) -> list[Score | FraudserveError]:
    """`score_requests(service, requests)`, the same outcomes, by the single path when the batch allows it."""
    model = service.models.production()  # no model: its error (503) before any lookup, as score_requests
    plan = model.plan
    if plan.on_demand or not plain(service, requests):
        return await score_requests(service, requests)
    ids = [tid for tid, _ in requests if tid is not None]
    found = await service.lookup(ids, plan)
    records: list[TransactionRecord] = [r for r in found if r is not None]
    if not records:
        return [TransactionNotFound(tid) for tid in ids]
    if model is not service.models.state.production or not all(
        r.views_plan is plan and r.views is not None for r in records
    ):  # a version swapped during the read, or records read without their features: the general scoring
        scored: list[Score] = await service.score(records)
    else:
        scored = _score(service, records, model)
    if len(records) == len(ids):
        return list(scored)
    answers = iter(scored)
    return [TransactionNotFound(tid) if r is None else next(answers) for tid, r in zip(ids, found, strict=True)]


def _score(service: ScoringService, records: list[TransactionRecord], model: LoadedModel) -> list[Score]:
    """The records (each read with its features for `model`'s plan) scored by `model` as production: what
    `ScoringService._score` gives for them, with the scores and contributions from one walk of the trees."""
    plan = model.plan
    started = time.perf_counter()
    fetched = [r.views for r in records if r.views is not None]
    matrix, uncertain, freshness = build_rows(plan, records, fetched, time.time())
    contributions: np.ndarray | None = None
    both = getattr(model.explainer, "predict_and_explain", None) if service.top_reasons else None
    result = both(matrix) if both is not None else None
    if result is not None:
        scores, contributions = result
    else:
        scores = model.predict(matrix)
        contributions = model.explainer.contributions(matrix) if service.top_reasons else None
    service.metrics.stage("predict", time.perf_counter() - started)

    names = plan.features
    count = service.top_reasons
    label_of = model.manifest.thresholds.label
    listed: list[float] = scores.tolist()
    gains: list[list[float]] | None = None if contributions is None else contributions[:, : len(names)].tolist()
    values: list[list[float]] = matrix.tolist()
    results: list[Score] = []
    labels: dict[str, int] = {}
    for i, record in enumerate(records):
        score = listed[i]
        doubt = uncertain[i]
        label = UNCERTAIN if doubt else label_of(score)
        reasons: list[Reason] = []
        if gains is not None:
            row, seen = gains[i], values[i]
            reasons = [
                Reason(names[j], None if seen[j] != seen[j] else seen[j], row[j])  # NaN: missing
                for j in top_positions(row, count)
            ]
        results.append(
            Score(record.transaction_id, score, label, model, reasons, freshness[i], doubt, matrix[i], "production")
        )
        labels[label] = labels.get(label, 0) + 1
    for label, scored in labels.items():
        service.metrics.scored(model.name, model.version, label, scored)
    return results
