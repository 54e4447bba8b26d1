"""The Open Inference Protocol (KServe v2) REST subset: health, server and model metadata, readiness, infer."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core import __version__
from core.errors import FraudserveError, InvalidInput, ModelNotFound
from core.keys import Scope
from inference_api.auth import require, require_unless_public
from inference_api.domain.models import LoadedModel, ModelManager
from inference_api.routes.models import loaded
from inference_api.schemas import (
    ERRORS_OIP,
    ErrorResponse,
    InferRequest,
    InferResponse,
    InferTensor,
    ModelMetadata,
    ModelName,
    ModelReady,
    ModelVersion,
    ServerReady,
    TensorMetadata,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
PREDICT = [require(Scope.predict)]


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "fraudserve", "version": __version__, "extensions": []}


HEALTH = [require_unless_public("health_public", Scope.admin)]
HEALTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "unauthorized (FRAUDSERVE_HEALTH_PUBLIC=false)"},
    403: {"model": ErrorResponse, "description": "forbidden (FRAUDSERVE_HEALTH_PUBLIC=false)"},
}


@router.get("/health/live", dependencies=HEALTH, responses=HEALTH_ERRORS)
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    response_model=ServerReady,
    dependencies=HEALTH,
    responses={503: {"model": ServerReady, "description": "Redis unreachable or no production model"}, **HEALTH_ERRORS},
)
async def ready(request: Request) -> JSONResponse:
    """Ready when the online store answers and a production model is loaded."""
    manager: ModelManager = request.app.state.models
    store_ok = await request.app.state.source.ping()
    model_ok = manager.state.production is not None
    body = {"ready": store_ok and model_ok, "online_store": store_ok, "model_loaded": model_ok}
    if manager.state.last_error:
        body["model_error"] = manager.state.last_error
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


def _metadata(model: LoadedModel, versions: list[str]) -> ModelMetadata:
    return ModelMetadata(
        name=model.name,
        versions=versions,
        platform=model.manifest.flavor.value,
        inputs=[TensorMetadata(name="features", datatype="FP32", shape=[-1, len(model.manifest.features)])],
        outputs=[TensorMetadata(name="score", datatype="FP32", shape=[-1])],
        parameters={"feature_service": model.manifest.feature_service, "features": model.manifest.feature_names},
    )


@router.get("/models/{name}", response_model=ModelMetadata, responses=ERRORS_OIP, dependencies=PREDICT)
async def model_metadata(name: ModelName, request: Request) -> ModelMetadata:
    model = await loaded(request, name, None)
    versions = [str(v.version) for v in request.app.state.models.registry.versions(name)]
    return _metadata(model, versions)


@router.get(
    "/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS_OIP, dependencies=PREDICT
)
async def version_metadata(name: ModelName, version: ModelVersion, request: Request) -> ModelMetadata:
    return _metadata(await loaded(request, name, version), [str(version)])


async def _ready(request: Request, name: str, version: int | None) -> JSONResponse:
    try:
        await loaded(request, name, version)
    except ModelNotFound:
        raise  # 404 model_not_found: not a model that could become ready
    except FraudserveError:
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    return JSONResponse({"name": name, "ready": True})


READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS_OIP,
    503: {"model": ModelReady, "description": "registered, but it cannot be loaded"},
}


@router.get("/models/{name}/ready", response_model=ModelReady, responses=READY_RESPONSES, dependencies=PREDICT)
async def model_ready(name: ModelName, request: Request) -> JSONResponse:
    return await _ready(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReady,
    responses=READY_RESPONSES,
    dependencies=PREDICT,
)
async def version_ready(name: ModelName, version: ModelVersion, request: Request) -> JSONResponse:
    return await _ready(request, name, version)


def _infer(model: LoadedModel, body: InferRequest, request: Request) -> InferResponse:
    tensor = body.inputs[0]
    width = len(model.manifest.features)
    shape = tensor.shape if len(tensor.shape) == 2 else [1, *tensor.shape]
    if shape[1] != width or shape[0] < 0:
        raise InvalidInput(
            f"inputs[0].shape {tensor.shape} does not fit model {model.name}: expected [N, {width}] with the columns "
            f"{', '.join(model.manifest.feature_names)}",
            {"expected_columns": model.manifest.feature_names},
        )
    flat = np.asarray(tensor.data, dtype=object).ravel()
    if flat.size != shape[0] * shape[1]:
        raise InvalidInput(f"inputs[0].data has {flat.size} values, shape {tensor.shape} needs {shape[0] * shape[1]}")
    try:
        matrix = np.array([np.nan if v is None else v for v in flat], dtype=np.float64).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("inputs[0].data must hold numbers (null for a missing feature)") from exc
    scores = model.predict(matrix)
    request.state.served = model  # latency by version (middleware.py)
    score_log = getattr(request.app.state, "score_log", None)
    if score_log is not None:
        score_log.record_matrix(getattr(request.state, "request_id", None), model, matrix, scores)
    return InferResponse(
        model_name=model.name,
        model_version=str(model.version),
        id=body.id,
        outputs=[InferTensor(name="score", shape=[len(scores)], datatype="FP32", data=scores.astype(float).tolist())],
    )


@router.post("/models/{name}/infer", response_model=InferResponse, responses=ERRORS_OIP, dependencies=PREDICT)
async def infer(name: ModelName, body: InferRequest, request: Request) -> InferResponse:
    """`inputs[0]`: an FP32 tensor [N, features] whose columns follow the model's manifest (see its metadata)."""
    return _infer(await loaded(request, name, None), body, request)


@router.post(
    "/models/{name}/versions/{version}/infer", response_model=InferResponse, responses=ERRORS_OIP, dependencies=PREDICT
)
async def infer_version(name: ModelName, version: ModelVersion, body: InferRequest, request: Request) -> InferResponse:
    return _infer(await loaded(request, name, version), body, request)
