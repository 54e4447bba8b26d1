"""Every error rendered once, as {"error": {"code", "message", "details"}}; no stack trace reaches a client."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import FraudserveError

log = logging.getLogger("fraudserve.api")


class PayloadTooLarge(FraudserveError):
    code = "payload_too_large"
    status = 413


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message, "details": details or {}}}
    )


def _metrics_error(request: Request, code: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.error(code)


def render(exc: FraudserveError, state: Any) -> JSONResponse:
    """One of our errors as its response (with Retry-After where it has one), counted in the app's metrics.

    `state`: the app's state. The exception handler and the lean score route (routes/fast_score.py) both use it."""
    metrics = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.error(exc.code)
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(FraudserveError)
    async def _ours(request: Request, exc: FraudserveError) -> JSONResponse:
        return render(exc, request.app.state)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        _metrics_error(request, "invalid_request")
        problems = [{"field": _where(tuple(e.get("loc", ()))), "problem": str(e.get("msg"))} for e in exc.errors()]
        first = problems[0] if problems else {"field": "body", "problem": "invalid"}
        message = f"{first['field']}: {first['problem']}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more problem(s), see details)"
        return error_response(422, "invalid_request", message, {"problems": problems})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8, not parseable): a SPEC invalid_request.
            problem = {"field": "body", "problem": str(exc.detail)}
            _metrics_error(request, "invalid_request")
            return error_response(422, "invalid_request", f"body: {exc.detail}", {"problems": [problem]})
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        _metrics_error(request, code)
        message = str(exc.detail) if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.headers.get("x-request-id") or getattr(request.state, "request_id", "")
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.url.path})
        _metrics_error(request, "internal_error")
        return error_response(
            500, "internal_error", f"an internal error occurred; quote request id {request_id} when reporting it"
        )
