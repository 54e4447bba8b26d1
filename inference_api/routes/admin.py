"""The model registry over HTTP, for `admin` keys: list, show, promote, rollback, reload."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from core.keys import Scope
from core.registry import PRODUCTION, ModelRegistry, ModelVersion
from inference_api.auth import require
from inference_api.domain.models import ModelManager
from inference_api.schemas import ErrorResponse, ModelName

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[require(Scope.admin)])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "unauthorized"},
    403: {"model": ErrorResponse, "description": "forbidden"},
    404: {"model": ErrorResponse, "description": "model_not_found"},
    413: {"model": ErrorResponse, "description": "payload_too_large"},
    422: {"model": ErrorResponse, "description": "invalid_request, or invalid_model (nothing to roll back to)"},
}


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=2**31 - 1)
    alias: str = Field(default=PRODUCTION, pattern=r"^[a-z][a-z0-9_-]{0,31}$")


def _registry(request: Request) -> ModelRegistry:
    manager: ModelManager = request.app.state.models
    return manager.registry


def _version(model: ModelVersion) -> dict[str, Any]:
    return {"name": model.name, "version": model.version, "aliases": list(model.aliases),
            "manifest": model.manifest.model_dump(mode="json")}  # fmt: skip


@router.get("/models", responses=ERRORS)
async def list_models(request: Request) -> dict[str, Any]:
    registry = _registry(request)
    models = {}
    for name in registry.names():
        models[name] = [{"version": v.version, "aliases": list(v.aliases)} for v in registry.versions(name)]
    return {"models": models}


@router.get("/models/{name}", responses=ERRORS)
async def show_model(name: ModelName, request: Request) -> dict[str, Any]:
    registry = _registry(request)
    manager: ModelManager = request.app.state.models
    versions = [{**_version(v), "integrity": registry.verify(name, v.version) or "ok"} for v in registry.versions(name)]
    serving = manager.state.production if name == manager.name else None
    return {"versions": versions, "alias_history": registry.history(name),
            "serving": serving.version if serving else None,
            "load_error": manager.state.last_error if name == manager.name else None}  # fmt: skip


@router.post("/models/{name}/promote", responses=ERRORS)
async def promote(name: ModelName, body: Promotion, request: Request) -> dict[str, Any]:
    model = await asyncio.to_thread(_registry(request).promote, name, body.version, body.alias)
    return _version(model)


@router.post("/models/{name}/rollback", responses=ERRORS)
async def rollback(name: ModelName, request: Request) -> dict[str, Any]:
    return _version(await asyncio.to_thread(_registry(request).rollback, name))


@router.post("/reload", responses=ERRORS)
async def reload(request: Request) -> dict[str, Any]:
    """Look at the registry now instead of at the next poll."""
    manager: ModelManager = request.app.state.models
    changed = await asyncio.to_thread(manager.refresh)
    production = manager.state.production
    return {"changed": changed, "production": production.version if production else None,
            "error": manager.state.last_error}  # fmt: skip
