"""The model registry: numbered immutable versions bound to a Feast feature service, and movable aliases."""

from fraudserve.registry.checks import RegistrationError
from fraudserve.registry.notices import RedisNotices
from fraudserve.registry.registry import CANDIDATE, PRODUCTION, FeatureServices, ModelRegistry, ModelVersion
from fraudserve.registry.storage import LocalStorage, Storage
from fraudserve.settings import Settings


def open_registry(settings: Settings | None = None, *, check_features: bool = True) -> ModelRegistry:
    """The registry under FRAUDSERVE_HOME, checking registrations against Feast (for notebooks and the CLI)."""
    from fraudserve.feature_store import open_offline_store
    from fraudserve.registry.feast_services import FeastFeatureServices

    resolved = settings or Settings()
    services = FeastFeatureServices(open_offline_store(resolved), resolved.offline) if check_features else None
    return ModelRegistry.at(resolved.models_dir, services, _notices(resolved))


def _notices(settings: Settings) -> RedisNotices | None:
    """Change notices go to the online store's Redis: FRAUDSERVE_REDIS, or the embedded server while it runs."""
    from fraudserve.embedded_redis import EmbeddedRedis
    from fraudserve.feature_store import redis_client

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
    "open_registry",
]
