"""The single score's own path: what the dynamic batcher calls for `POST /v1/fraud/score`.

A batch of the single score is 1 to a few requests by id, and `score_requests` (the general path: inline events,
the canary share drawn per request, shadow scoring, Feast's SDK) spends on that generality
as much CPU as the features, the model and the reasons together (`bench.hotpath`: 158 us for one id against 88 for
its stages). When none of that generality is in play (ids only, one version serving everything, a source that reads
a transaction with its features in one round trip, no shadow), `score_singles` reads the batch with one lookup
and scores its records as production with `ScoringService._score` (one model matrix, the
scores and contributions from one walk of the compiled trees, the reasons picked by index, one label count per
label; a plan's on-demand views are computed in `build_rows` from the records, as on the general path).
Everything else, and any batch that needs it, goes to `score_requests` unchanged. Each `Score` equals the
one `score_requests` gives (tests/integration/test_single_score.py compares them field by field on real
transactions, reasons, labels and freshness included).
"""

from __future__ import annotations

from collections.abc import Sequence

from core.errors import FraudserveError
from inference_api.domain.features import TransactionRecord
from inference_api.domain.scoring import (
    Request,
    Score,
    ScoringService,
    TransactionNotFound,
    score_requests,
)


def plain(service: ScoringService, requests: Sequence[Request]) -> bool:
    """Whether this batch can take the single path: ids only, production serving everything (no candidate drawn
    for a canary share), no shadow scoring, and a source that reads each transaction with its features in one round
    trip."""
    if service.shadow or not getattr(service.source, "fused", False):
        return False
    if service.canary_percent > 0 and service.models.candidate() is not None:
        return False
    return all(event is None and tid is not None for tid, event in requests)


async def score_singles(service: ScoringService, requests: Sequence[Request]) -> list[Score | FraudserveError]:
    """`score_requests(service, requests)`, the same outcomes, by the single path when the batch allows it."""
    model = service.models.production()  # no model: its error (503) before any lookup, as score_requests
    plan = model.plan
    if not plain(service, requests):
        return await score_requests(service, requests)
    ids = [tid for tid, _ in requests if tid is not None]
    found = await service.lookup(ids, plan)
    records: list[TransactionRecord] = [r for r in found if r is not None]
    if not records:
        return [TransactionNotFound(tid) for tid in ids]
    if model is not service.models.state.production:  # a version swapped during the read: the general scoring
        scored: list[Score] = await service.score(records)
    else:  # production scores them (no canary draw, no shadow: `plain`); records read without features are fetched
        scored = await service._score(records, model, serving_default=True, role="production")
    if len(records) == len(ids):
        return list(scored)
    answers = iter(scored)
    return [TransactionNotFound(tid) if r is None else next(answers) for tid, r in zip(ids, found, strict=True)]
