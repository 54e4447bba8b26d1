"""The generic per-model API: entity rows in, the model's own feature service fetched, scores out."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from core.errors import FraudserveError, InvalidInput
from core.keys import Scope
from inference_api.auth import require
from inference_api.domain.models import LoadedModel, ModelManager
from inference_api.domain.scoring import Score, score_requests
from inference_api.routes.fraud import ERRORS, ScoringDep, _as_request, log_scores
from inference_api.schemas import ErrorBody, ModelName, ModelRef, ModelVersion, PredictRequest, PredictResponse

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[require(Scope.predict)])


async def loaded(request: Request, name: str, version: int | None) -> LoadedModel:
    manager: ModelManager = request.app.state.models
    # Loading a version not yet in memory reads files and builds trees: off the event loop.
    return await asyncio.to_thread(manager.get, name, version)


def check_size(request: Request, field: str, count: int) -> None:
    """The batch limit of the settings (the schema's maxItems is only the hard ceiling of any configuration)."""
    limit: int = request.app.state.settings.max_batch
    if count > limit:
        raise InvalidInput(
            f"{field}: {count} {field} is more than the limit of {limit} per request; split the request",
            {"field": field, "limit": limit, field: count},
        )


async def _predict(body: PredictRequest, request: Request, service: ScoringDep, model: LoadedModel) -> PredictResponse:
    outcomes = await score_requests(service, [_as_request(row) for row in body.rows], model)
    log_scores(request, outcomes)
    request.state.served = [o.model for o in outcomes if isinstance(o, Score)]  # latency by version (middleware.py)
    scores: list[float | None] = []
    errors: list[ErrorBody | None] = []
    for outcome in outcomes:
        if isinstance(outcome, FraudserveError):
            scores.append(None)
            errors.append(ErrorBody(code=outcome.code, message=outcome.message, details=outcome.details))
        else:
            scores.append(outcome.score)
            errors.append(None)
    return PredictResponse(
        model=ModelRef(name=model.name, version=model.version),
        feature_service=model.manifest.feature_service,
        scores=scores,
        errors=errors,
    )


@router.post("/{name}/predict", response_model=PredictResponse, responses=ERRORS)
async def predict(name: ModelName, body: PredictRequest, request: Request, service: ScoringDep) -> PredictResponse:
    """Scores from the production version of `name`, on features of the feature service it was registered with."""
    check_size(request, "rows", len(body.rows))
    return await _predict(body, request, service, await loaded(request, name, None))


@router.post("/{name}/versions/{version}/predict", response_model=PredictResponse, responses=ERRORS)
async def predict_version(
    name: ModelName, version: ModelVersion, body: PredictRequest, request: Request, service: ScoringDep
) -> PredictResponse:
    """Scores from one version of `name`."""
    check_size(request, "rows", len(body.rows))
    return await _predict(body, request, service, await loaded(request, name, version))
