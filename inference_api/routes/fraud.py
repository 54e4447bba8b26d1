"""The business API: score a transaction by id or inline, one at a time or in batches."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

import pydantic_core
from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute

from core.errors import FraudserveError, InvalidInput
from core.keys import Scope
from inference_api.auth import check_key, require
from inference_api.domain.admission import Admission
from inference_api.domain.batching import DynamicBatcher
from inference_api.domain.scoring import Score, ScoredBatch, ScoringService, TransactionNotFound, score_batch_columns
from inference_api.schemas import BatchRequest, BatchResponse, ErrorResponse, ScoreRequest, ScoreResponse
from pipelines.events import TRANSACTION_ID_MAX_LEN

router = APIRouter(prefix="/v1/fraud", tags=["fraud"], dependencies=[require(Scope.score)])


async def scoring(request: Request) -> ScoringService:  # async: FastAPI runs a sync dependency on a worker thread
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
        "reasons": [{"feature": f, "value": v, "contribution": c} for f, v, c in score.reasons],
        "feature_freshness_seconds": score.feature_freshness_seconds,
        "uncertain_reasons": score.uncertain_reasons,
    }


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


def admission(request: Request) -> Admission:
    """The process's admission bound for batch items (created with the first batch, from the settings)."""
    state = request.app.state
    found: Admission | None = getattr(state, "batch_admission", None)
    if found is None:
        found = state.batch_admission = Admission(state.settings.batch_max_items_in_flight)
    return found


async def score_batch(body: BatchRequest, request: Request, service: ScoringDep) -> Response:
    """Score up to the configured number of transactions; each item gets its result or its own error.

    One version scores the whole batch; ids are looked up, fetched, predicted and explained column-wise in one pass.
    When the process already scores as many batch items as it may, 503 `overloaded` with Retry-After, at once."""
    return await answer_batch(request, service, [_as_request(item) for item in body.items])


async def answer_batch(
    request: Request, service: ScoringService, requests: list[tuple[str | None, dict[str, object] | None]]
) -> Response:
    """score:batch's answer to its items (`(transaction_id, inline event)` each): the limits, then one version's
    scores, column-wise for ids (`ScoredBatch`, written by `batch_body`), item by item otherwise."""
    limit = request.app.state.settings.max_batch
    if len(requests) > limit:
        raise InvalidInput(
            f"items: {len(requests)} items is more than the limit of {limit} per batch; split the batch",
            {"field": "items", "limit": limit, "items": len(requests)},
        )
    with admission(request).admit(len(requests)):
        scored = await score_batch_columns(service, requests)
    metrics = request.app.state.metrics
    if isinstance(scored, ScoredBatch):
        score_log = getattr(request.app.state, "score_log", None)
        if score_log is not None:
            score_log.record_batch(getattr(request.state, "request_id", None), scored)
        request.state.served = [scored.model] if scored.rows else []  # latency by version (middleware.py)
        return Response(batch_body(scored, metrics), media_type="application/json")
    outcomes = scored
    log_scores(request, outcomes)
    request.state.served = [o.model for o in outcomes if isinstance(o, Score)]  # latency by version (middleware.py)
    results: list[dict[str, Any]] = []
    for (tid, event), outcome in zip(requests, outcomes, strict=True):
        if isinstance(outcome, FraudserveError):
            metrics.error(outcome.code)
            named = tid if tid is not None else (event or {}).get("transaction_id")
            results.append({"transaction_id": named, "result": None, "error": error_body(outcome)})
        else:
            results.append({"transaction_id": outcome.transaction_id, "result": score_body(outcome), "error": None})
    # The documented BatchResponse, built once as plain values and serialized once by pydantic's own serializer
    # (the bytes FastAPI wrote through the response model, without a model object per item and a second validation).
    return Response(pydantic_core.to_json({"results": results}, inf_nan_mode="null"), media_type="application/json")


_ITEMS = BatchRequest.model_fields["items"].metadata
_MAX_ITEMS = min(getattr(m, "max_length", None) or 10**9 for m in _ITEMS)  # the model's own bound (10,000)


def plain_ids(body: bytes, content_type: str | None) -> list[str] | None:
    """The ids of a JSON body of the plain form `{"items": [{"transaction_id": "..."}, ...]}` that `BatchRequest`
    accepts as it is (every id a string of 1 to TRANSACTION_ID_MAX_LEN characters, at most the model's item bound),
    read without a pydantic object per item; None for anything else (inline transactions, other keys, other types,
    not JSON), which FastAPI's own handler then validates (its 422s, unchanged)."""
    if content_type is None or not (content_type == "application/json" or content_type.startswith("application/json;")):
        return None
    try:
        data = json.loads(body)
    except ValueError:  # not JSON (or not UTF-8): FastAPI's own answer
        return None
    if type(data) is not dict or len(data) != 1 or type(items := data.get("items")) is not list:
        return None
    if not 1 <= len(items) <= _MAX_ITEMS:
        return None
    ids = [item.get("transaction_id") if type(item) is dict and len(item) == 1 else None for item in items]
    if all([type(t) is str and 0 < len(t) <= TRANSACTION_ID_MAX_LEN for t in ids]):
        return ids  # type: ignore[return-value]  # every one a str, just checked
    return None


class BatchRoute(APIRoute):
    """score:batch's route: FastAPI's, with a plain body of ids (`plain_ids`, what a client re-scoring ingested
    transactions sends) answered without FastAPI's validation of it (a pydantic object per item: 0.21 ms of a
    256-id request in process) after the same key check as the router's dependency; any other body goes through
    FastAPI's handler as before. The route, its OpenAPI description and its errors are FastAPI's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        default = super().get_route_handler()

        async def handler(request: Request) -> Response:
            ids = plain_ids(await request.body(), request.headers.get("content-type"))  # the body stays cached
            if ids is None:
                return await default(request)
            state = request.app.state
            check_key(state.keys, request.headers.get("authorization"), request.headers.get("x-api-key"),
                      Scope.score)  # fmt: skip
            return await answer_batch(request, state.scoring, [(t, None) for t in ids])

        return handler


router.add_api_route(
    "/score:batch", score_batch, methods=["POST"], response_model=BatchResponse, responses=ERRORS,
    route_class_override=BatchRoute,
)  # fmt: skip


def error_body(error: FraudserveError) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "details": error.details}


_ITEM = (
    b'{"transaction_id":%s,"result":{"transaction_id":%s,"score":%s,"label":%s,"model":%s,"reasons":[%s],'
    b'"feature_freshness_seconds":%s,"uncertain_reasons":%s},"error":null}'
)
_REASON = b'{"feature":%s,"value":%s,"contribution":%s}'


def _each(values: list[Any]) -> list[bytes]:
    """Each of `values` (numbers or None) as pydantic's serializer writes it: the list serialized once and split at
    its commas (a number's or null's text holds none)."""
    text = pydantic_core.to_json(values, inf_nan_mode="null")
    return text[1:-1].split(b",") if values else []


def batch_body(batch: ScoredBatch, metrics: Any) -> bytes:
    """The `BatchResponse` of a columnar batch, byte for byte what `pydantic_core.to_json` writes for the items as
    `score_body` builds them (tests/unit/test_scoring_answer.py): numbers serialized one list per column, each
    distinct string (feature names, labels, the model) once, each item's text put together from those pieces,
    instead of a dict per item and per reason."""
    if batch.complete and batch.rows:
        return _complete_body(batch)
    to_json = pydantic_core.to_json
    model = to_json({"name": batch.model.name, "version": batch.model.version})
    reasons: list[bytes] = [b""] * len(batch.rows)
    if batch.reasons is not None and batch.rows:
        features, values, gains = batch.reasons  # NaN values: null, as None was
        pieces = [
            _REASON % piece
            for piece in zip(
                _quoted(features.ravel().tolist()),
                _each(values.ravel().tolist()),
                _each(gains.ravel().tolist()),
                strict=True,
            )
        ]
        count = features.shape[1]
        reasons = [b",".join(pieces[i : i + count]) for i in range(0, len(pieces), count)]
    ids = batch.ids
    doubts = [to_json(u) if u else b"[]" for u in batch.uncertain]
    items = [
        _ITEM % (tid, tid, score, label, model, why, fresh, doubt)
        for tid, score, label, why, fresh, doubt in zip(
            map(to_json, [ids[row] for row in batch.rows]),  # a complete batch with rows: `_complete_body`
            _each(batch.scores),
            _quoted(batch.labels),
            reasons,
            _each(batch.freshness),
            doubts,
            strict=True,
        )
    ]
    if not batch.complete:  # each unknown id is its own error, in request order
        placed: list[bytes | None] = [None] * len(ids)
        for row, item in zip(batch.rows, items, strict=True):
            placed[row] = item
        for row in [i for i, item in enumerate(placed) if item is None]:
            error = TransactionNotFound(ids[row])
            metrics.error(error.code)
            placed[row] = to_json({"transaction_id": ids[row], "result": None, "error": error_body(error)})
        items = [item for item in placed if item is not None]
    return b'{"results":[' + b",".join(items) + b"]}"


_ANSWER = (
    b'{"transaction_id":"%%s","result":{"transaction_id":"%%s","score":%%s,"label":%%s,"model":%s,"reasons":[%s],'
    b'"feature_freshness_seconds":%%s,"uncertain_reasons":%%s},"error":null}'
)
_QUOTED: dict[str, bytes] = {}  # feature names and labels as JSON strings (a few dozen distinct ones)


def _quoted(values: list[str]) -> list[bytes]:
    """Each of `values` as pydantic's serializer writes a string, each distinct one serialized once."""
    try:
        return list(map(_QUOTED.__getitem__, values))
    except KeyError:
        if len(_QUOTED) > 10_000:  # names of models no longer served
            _QUOTED.clear()
        for value in set(values):
            _QUOTED[value] = pydantic_core.to_json(value)
        return list(map(_QUOTED.__getitem__, values))


def _complete_body(batch: ScoredBatch) -> bytes:
    """`batch_body` of a batch whose every id was found: the whole answer is one `%` format of a template (an item's
    text repeated, the model written in) over every item's pieces in order, each kind of piece made for the whole
    batch at once: the ids (one serialization, split at the `","` that only a boundary between two JSON strings
    holds), every number of the batch (one list: scores, reasons' values and gains, freshness), the labels and
    feature names (each distinct one serialized once). No Python work per item beyond the uncertain reasons."""
    to_json = pydantic_core.to_json
    count = len(batch.rows)
    top = 0 if batch.reasons is None else batch.reasons[0].shape[1]
    model = to_json({"name": batch.model.name, "version": batch.model.version}).replace(b"%", b"%%")
    item = _ANSWER % (model, b",".join([_REASON] * top))
    numbers: list[Any] = list(batch.scores)
    if batch.reasons is not None:
        features, values, gains = batch.reasons  # NaN values: null, as None was
        numbers += values.ravel().tolist()
        numbers += gains.ravel().tolist()
    numbers += batch.freshness
    texts = _each(numbers)
    width = 6 + 3 * top
    pieces: list[bytes] = [b""] * (count * width)
    ids = to_json(list(batch.ids))[2:-2].split(b'","')
    pieces[0::width] = ids
    pieces[1::width] = ids
    pieces[2::width] = texts[:count]
    pieces[3::width] = _quoted(batch.labels)
    if batch.reasons is not None:
        names = _quoted(features.ravel().tolist())
        reasons = count * top
        for j in range(top):
            pieces[4 + 3 * j :: width] = names[j::top]
            pieces[5 + 3 * j :: width] = texts[count + j : count + reasons : top]
            pieces[6 + 3 * j :: width] = texts[count + reasons + j : count + 2 * reasons : top]
    pieces[4 + 3 * top :: width] = texts[-count:]
    pieces[5 + 3 * top :: width] = [to_json(u) if u else b"[]" for u in batch.uncertain]
    return b'{"results":[' + b",".join([item] * count) % tuple(pieces) + b"]}"
