"""One error hierarchy: every error a person can see carries a code, a message that says what to do, and details."""

from __future__ import annotations

from typing import Any


class FraudserveError(Exception):
    """Base of fraudserve's own errors; `code` and `status` are what the API renders."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ConfigurationError(FraudserveError):
    """A setting or the machine is not ready for the command; the message names the fix."""

    code = "configuration_error"


class RedisUnavailable(FraudserveError):
    code = "features_unavailable"
    status = 503


class Unauthorized(FraudserveError):
    code = "unauthorized"
    status = 401


class Forbidden(FraudserveError):
    code = "forbidden"
    status = 403


class InvalidInput(FraudserveError):
    code = "invalid_request"
    status = 422


class ModelNotFound(FraudserveError):
    code = "model_not_found"
    status = 404

    def __init__(self, name: str, version: int | str | None = None, known: list[str] | None = None) -> None:
        message = f"model {name!r} is not registered"
        if version is not None:
            message = f"model {name!r} has no version or alias {version!r}"
        if known is not None:
            message += f" (known: {', '.join(known) or 'none'})"
        super().__init__(message, {"name": name, "version": version})
