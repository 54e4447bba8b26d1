"""The lean path of `POST /v1/fraud/score`: the hot route answered in plain ASGI, everything else by FastAPI.

A score request is a few dozen bytes and the scoring itself a few hundred microseconds, so FastAPI's own work per
request (its exception and exit-stack middlewares, the router, a `Request`, dependency solving, the body through
its field machinery, a `Response` object) was a large share of a request's CPU. `FastScore` sits inside
`RequestContext` (request id, body limit, metrics, access log stay the same) and answers a well-formed request
itself: the JSON body validated by the same pydantic model (`ScoreRequest`, python mode, as FastAPI validates it),
the same key check (`auth.check_key`), the same batcher, score log and response body (`routes.fraud.score_body`),
errors rendered by the same function as the exception handlers (`errors.render`).

Anything else goes to the FastAPI route unchanged, its body replayed: another method, a body that is not JSON or
does not validate (so every 422 is FastAPI's own, byte for byte), no batcher (an app without its lifespan). The
FastAPI route stays registered, so the OpenAPI document describes the route as before.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import FraudserveError
from core.keys import Scope as KeyScope
from inference_api import errors
from inference_api.auth import check_key
from inference_api.routes import fraud
from inference_api.schemas import ScoreRequest

PATH = "/v1/fraud/score"
_JSON = b"application/json"


def _route() -> Any:
    """The FastAPI route of the path: what the middleware's metrics and logs name (`scope["route"]`)."""
    for route in fraud.router.routes:
        if getattr(route, "path", None) == PATH and "POST" in getattr(route, "methods", ()):
            return route
    raise LookupError(f"routes/fraud.py has no POST {PATH} route for the lean path to stand in for")


class FastScore:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = _route()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        authorization = api_key = None
        json_body = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                json_body = value == _JSON or value.startswith(b"application/json;")
            elif name == b"authorization" and authorization is None:  # the first, as starlette's headers.get
                authorization = value.decode("latin-1")
            elif name == b"x-api-key" and api_key is None:
                api_key = value.decode("latin-1")
        state = scope["app"].state
        batcher = getattr(state, "batcher", None)
        if not json_body or batcher is None:
            await self.app(scope, receive, send)
            return
        body = await _read(receive)
        try:
            request = ScoreRequest.model_validate(json.loads(body))
        except Exception:  # not JSON, not an object of the model: FastAPI's own answer (422), byte for byte
            await self.app(scope, _replay(body, receive), send)
            return
        scope["route"] = self.route
        try:
            check_key(state.keys, authorization, api_key, KeyScope.score)
            event = request.transaction.model_dump() if request.transaction is not None else None
            outcome = await batcher.submit((request.transaction_id, event))
            if isinstance(outcome, FraudserveError):
                raise outcome
        except FraudserveError as exc:
            await errors.render(exc, state)(scope, receive, send)
            return
        score_log = getattr(state, "score_log", None)
        if score_log is not None:
            score_log.record(scope["state"].get("request_id"), (outcome,))
        scope["state"]["served"] = outcome.model  # its latency by version (middleware.py), for the console
        await _answer(send, 200, json.dumps(fraud.score_body(outcome), allow_nan=False).encode())


async def _read(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` with the body already read handed out first (then the connection's own messages)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def _answer(send: Send, status: int, payload: bytes) -> None:
    # The headers starlette's Response(payload, media_type="application/json") sends, without building one.
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(payload)).encode()), (b"content-type", _JSON)],
        }
    )
    await send({"type": "http.response.body", "body": payload})
