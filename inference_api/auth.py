"""API-key checks as FastAPI dependencies: open while no key exists (the API then serves on loopback only)."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request

from core.keys import KeyStore, Scope


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.headers.get("x-api-key")


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
