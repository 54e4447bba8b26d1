"""API-key checks as FastAPI dependencies: open while no key exists (the API then serves on loopback only)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from core.keys import KeyStore, Scope


def key_of(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request presents: `Authorization: Bearer KEY`, else `X-API-Key: KEY`."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return api_key


def presented_key(request: Request) -> str | None:
    return key_of(request.headers.get("authorization"), request.headers.get("x-api-key"))


def check_key(keys: KeyStore, authorization: str | None, api_key: str | None, scope: Scope) -> None:
    """Unauthorized or Forbidden unless no key exists or the presented one has `scope` (routes/fast_score.py)."""
    if keys.any():
        keys.authenticate(key_of(authorization, api_key), scope)


def require(scope: Scope) -> Any:
    async def check(request: Request) -> None:
        keys: KeyStore = request.app.state.keys
        if keys.any():
            keys.authenticate(presented_key(request), scope)

    return Depends(check)


def require_unless_public(setting: str, scope: Scope) -> Any:
    """Open while the boolean setting `setting` is true (health and metrics, by default); otherwise as `require`."""

    async def check(request: Request) -> None:
        keys: KeyStore = request.app.state.keys
        if not getattr(request.app.state.settings, setting) and keys.any():
            keys.authenticate(presented_key(request), scope)

    return Depends(check)
