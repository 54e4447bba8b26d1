"""The model registry over HTTP, for `admin` keys: list, show, register a package, promote, rollback, reload."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from core.keys import Scope
from core.registry import PRODUCTION, ModelRegistry, ModelVersion, registry_notices
from core.settings import Settings
from inference_api.auth import require
from inference_api.domain.feature_services import FeastFeatureServices
from inference_api.domain.models import ModelManager
from inference_api.domain.package_upload import unpack
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


# The body of a registration: the package folder as a gzipped tar (`tar czf - -C PACKAGE .`).
PACKAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
    }
}
FeatureServiceName = Annotated[
    str | None,
    Query(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
          description="The feature service the package must have been trained on (default: its manifest's)."),
]  # fmt: skip


@router.post("/models/{name}/versions", status_code=201, responses=ERRORS, openapi_extra=PACKAGE_BODY)
async def register_version(
    name: ModelName, request: Request, feature_service: FeatureServiceName = None
) -> dict[str, Any]:
    """Register a model package sent as a `.tar.gz` body: the CLI's checks (manifest, model file, features against
    the Feast feature service, the API's feature plan), plus a size limit (FRAUDSERVE_MAX_PACKAGE_BYTES, 413 past
    it) and no links, device files or paths outside the package (422 naming the member). Nothing is kept of a
    refused package. The new version is `production` if it is the name's first, `candidate` otherwise."""
    body = await request.body()
    settings: Settings = request.app.state.settings
    manager: ModelManager = request.app.state.models
    model = await asyncio.to_thread(_register_upload, body, name, feature_service, settings, manager)
    await asyncio.to_thread(manager.refresh)
    return _version(model)


def _register_upload(
    body: bytes, name: str, feature_service: str | None, settings: Settings, manager: ModelManager
) -> ModelVersion:
    uploads = settings.home_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=uploads, prefix=f"{name}-") as tmp:
        folder = unpack(body, Path(tmp), settings.max_package_bytes)
        services = FeastFeatureServices(manager.store, settings.offline)
        registry = ModelRegistry.at(settings.models_dir, services, registry_notices(settings))
        return registry.register(folder, name=name, feature_service=feature_service)


@router.post("/reload", responses=ERRORS)
async def reload(request: Request) -> dict[str, Any]:
    """Look at the registry now instead of at the next poll."""
    manager: ModelManager = request.app.state.models
    changed = await asyncio.to_thread(manager.refresh)
    production = manager.state.production
    return {"changed": changed, "production": production.version if production else None,
            "error": manager.state.last_error}  # fmt: skip
