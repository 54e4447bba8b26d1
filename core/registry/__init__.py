"""The model registry: numbered immutable versions bound to a Feast feature service, and movable aliases."""

from core.registry.checks import RegistrationError
from core.registry.notices import RedisNotices
from core.registry.registry import CANDIDATE, PRODUCTION, FeatureServices, ModelRegistry, ModelVersion
from core.registry.storage import LocalStorage, Storage
from core.settings import Settings


def open_model_registry(settings: Settings, services: FeatureServices | None = None) -> ModelRegistry:
    """The registry under FRAUDSERVE_HOME; `services` checks registrations against the feature services (None: the
    API's reader, which registers nothing)."""
    return ModelRegistry.at(settings.models_dir, services, registry_notices(settings))


def registry_notices(settings: Settings) -> RedisNotices | None:
    """Change notices go to the online store's Redis: FRAUDSERVE_REDIS, or the embedded server while it runs."""
    from core.connections import redis_client
    from core.embedded_redis import EmbeddedRedis

    connection = settings.redis
    if not connection:
        running = EmbeddedRedis(settings.embedded_redis_dir, settings.redis_server_bin).running()
        if running is None:
            return None
        connection = running.connection_string
    return RedisNotices(lambda: redis_client(settings, connection, timeout_s=2.0))


__all__ = [
    "CANDIDATE",
    "PRODUCTION",
    "FeatureServices",
    "LocalStorage",
    "ModelRegistry",
    "ModelVersion",
    "RegistrationError",
    "Storage",
    "open_model_registry",
    "registry_notices",
]
