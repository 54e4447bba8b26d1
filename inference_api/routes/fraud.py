"""The business API: score a transaction by id or inline, one at a time or in batches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from core.errors import FraudserveError, InvalidInput
from core.keys import Scope
from inference_api.auth import require
from inference_api.domain.batching import DynamicBatcher
from inference_api.domain.scoring import Score, ScoringService, score_requests
from inference_api.schemas import (
    BatchItem,
    BatchRequest,
    BatchResponse,
    ErrorBody,
    ErrorResponse,
    ScoreRequest,
    ScoreResponse,
)

router = APIRouter(prefix="/v1/fraud", tags=["fraud"], dependencies=[require(Scope.score)])


def scoring(request: Request) -> ScoringService:
    service: ScoringService = request.app.state.scoring
    return service


ScoringDep = Annotated[ScoringService, Depends(scoring)]

ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "unauthorized"},
    403: {"model": ErrorResponse, "description": "forbidden"},
    404: {"model": ErrorResponse, "description": "transaction_not_found"},
    413: {"model": ErrorResponse, "description": "payload_too_large"},
    422: {"model": ErrorResponse, "description": "invalid_request"},
    503: {"model": ErrorResponse, "description": "features_unavailable, model_not_ready or overloaded"},
}


def log_scores(request: Request, outcomes: Sequence[object]) -> None:
    """Hand the returned scores to the score log (a list append; the file is written in the background)."""
    score_log = getattr(request.app.state, "score_log", None)
    if score_log is not None:
        score_log.record(getattr(request.state, "request_id", None), outcomes)


def score_body(score: Score) -> dict[str, Any]:
    """A score as the `ScoreResponse` JSON object."""
    return {
        "transaction_id": score.transaction_id,
        "score": score.score,
        "label": score.label,
        "model": {"name": score.model.name, "version": score.model.version},
        "reasons": [{"feature": r.feature, "value": r.value, "contribution": r.contribution} for r in score.reasons],
        "feature_freshness_seconds": score.feature_freshness_seconds,
        "uncertain_reasons": score.uncertain_reasons,
    }


def to_response(score: Score) -> ScoreResponse:
    return ScoreResponse.model_validate(score_body(score))


def _as_request(body: ScoreRequest) -> tuple[str | None, dict[str, object] | None]:
    return body.transaction_id, body.transaction.model_dump() if body.transaction else None


@router.post("/score", response_model=ScoreResponse, responses=ERRORS)
async def score(body: ScoreRequest, request: Request) -> Response:
    """Score one transaction: by `transaction_id` (already ingested) or by the whole event as `transaction`.

    Concurrent requests are scored together (dynamic batching: one lookup, one fetch, one model call).
    """
    batcher: DynamicBatcher = request.app.state.batcher
    outcome = await batcher.submit(_as_request(body))
    if isinstance(outcome, FraudserveError):
        raise outcome
    log_scores(request, (outcome,))
    request.state.served = outcome.model  # its latency by version (middleware.py), for the console
    # Serialized here, not through the response model: every value is already of its documented type, and this
    # path runs thousands of times a second (tests validate these bodies against ScoreResponse).
    return Response(json.dumps(score_body(outcome), allow_nan=False), media_type="application/json")


@router.post("/score:batch", response_model=BatchResponse, responses=ERRORS)
async def score_batch(body: BatchRequest, request: Request, service: ScoringDep) -> BatchResponse:
    """Score up to the configured number of transactions; each item gets its result or its own error."""
    limit = request.app.state.settings.max_batch
    if len(body.items) > limit:
        raise InvalidInput(
            f"items: {len(body.items)} items is more than the limit of {limit} per batch; split the batch",
            {"field": "items", "limit": limit, "items": len(body.items)},
        )
    outcomes = await score_requests(service, [_as_request(item) for item in body.items])
    log_scores(request, outcomes)
    results = []
    for item, outcome in zip(body.items, outcomes, strict=True):
        tid = item.transaction_id or (item.transaction.transaction_id if item.transaction else None)
        if isinstance(outcome, FraudserveError):
            request.app.state.metrics.error(outcome.code)
            error = ErrorBody(code=outcome.code, message=outcome.message, details=outcome.details)
            results.append(BatchItem(transaction_id=tid, error=error))
        else:
            results.append(BatchItem(transaction_id=tid, result=to_response(outcome)))
    return BatchResponse(results=results)
