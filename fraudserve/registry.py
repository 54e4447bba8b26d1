"""The model registry for notebooks and the CLI: `open_registry()` checks each registration against the Feast repo's
feature services (typed features, a smoke test on offline rows, the API's feature plan)."""

from __future__ import annotations

from typing import overload

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

    resolved = settings or Settings()
    services = FeastFeatureServices(open_offline_store(resolved), resolved.offline) if check_features else None
    return open_model_registry(resolved, services)


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
