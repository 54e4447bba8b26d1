"""The model registry for notebooks and the CLI: `open_registry()` checks each registration against the Feast repo's
feature services (typed features, a smoke test on offline rows, the API's feature plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, overload

from core.registry import (
    CANDIDATE,
    PRODUCTION,
    FeatureServices,
    LocalStorage,
    ModelRegistry,
    ModelVersion,
    RegistrationError,
    Storage,
    open_model_registry,
)
from core.settings import Settings
from fraudserve.remote import RemoteRegistry
from inference_api.domain.feature_services import FeastFeatureServices


@overload
def open_registry(settings: Settings | None = None, *, check_features: bool = True) -> ModelRegistry: ...


@overload
def open_registry(settings: Settings | None = None, *, url: str, key: str | None = None) -> RemoteRegistry: ...


def open_registry(
    settings: Settings | None = None, *, check_features: bool = True, url: str | None = None, key: str | None = None
) -> ModelRegistry | RemoteRegistry:
    """The registry under FRAUDSERVE_HOME, checking registrations against Feast (for notebooks and the CLI); with
    `url`, the registry of the API running there (an `admin` key), e.g. from a notebook on another machine."""
    if url is not None:
        return RemoteRegistry(url, key)
    from fraudserve.feature_store import open_offline_store
    from fraudserve.service_cache import CachedFeatureServices

    resolved = settings or Settings()
    if not check_features:
        return open_model_registry(resolved, None)
    # Feast is opened only when the cache of its answers is stale (see fraudserve.service_cache).
    services = CachedFeatureServices(
        resolved, lambda: FeastFeatureServices(open_offline_store(resolved), resolved.offline)
    )
    services.prune()
    base = open_model_registry(resolved, services)
    return Registry(base.storage, base.services, base.notices, settings=resolved)


class Registry(ModelRegistry):
    """The registry with Feast checks that also takes MLflow models: `register("models:/fraud/1", name=...,
    feature_service=..., thresholds=(0.3, 0.8))` (see fraudserve.mlflow_models)."""

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings

    def register(
        self,
        package: Path | str,
        *,
        name: str,
        feature_service: str | None = None,
        thresholds: tuple[float, float] | None = None,
    ) -> ModelVersion:
        from fraudserve.mlflow_models import is_mlflow_source, register_mlflow

        if not is_mlflow_source(package):
            return super().register(package, name=name, feature_service=feature_service)
        if feature_service is None:
            raise RegistrationError(f"{package}: give the feature service the MLflow model was trained on")
        model: ModelVersion = register_mlflow(
            str(package), name=name, feature_service=feature_service, thresholds=thresholds, settings=self.settings,
            report=print, registry=self,
        )  # fmt: skip
        return model


__all__ = [
    "CANDIDATE",
    "PRODUCTION",
    "FeastFeatureServices",
    "FeatureServices",
    "LocalStorage",
    "ModelRegistry",
    "ModelVersion",
    "RegistrationError",
    "RemoteRegistry",
    "Storage",
    "open_registry",
]
