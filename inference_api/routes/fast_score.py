"""The lean path of `POST /v1/fraud/score`: the hot route answered in plain ASGI, everything else by FastAPI.

A score request is a few dozen bytes and the scoring itself a few hundred microseconds, so FastAPI's own work per
request (its exception and exit-stack middlewares, the router, a `Request`, dependency solving, the body through
its field machinery, a `Response` object) was a large share of a request's CPU. `FastScore` sits inside
`RequestContext` (request id, body limit, metrics, access log stay the same) and answers a well-formed request
itself: the JSON body validated by the same pydantic model (`ScoreRequest`, python mode, as FastAPI validates it),
the same key check (`auth.check_key`), the same batcher, score log and response body (`routes.fraud.score_body`'s
JSON, written by `score_bytes` from cached pieces), errors rendered by the same function as the exception handlers
(`errors.render`).

Anything else goes to the FastAPI route unchanged, its body replayed: another method, a body that is not JSON or
does not validate (so every 422 is FastAPI's own, byte for byte), no batcher (an app without its lifespan). The
FastAPI route stays registered, so the OpenAPI document describes the route as before.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring_ascii as _string
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import FraudserveError
from core.keys import Scope as KeyScope
from inference_api import errors
from inference_api.auth import check_key
from inference_api.domain.scoring import Score
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
        await _answer(send, 200, score_bytes(outcome))


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


# ------------------------------------------------------------------------------------------------ the response body
# `json.dumps(score_body(score), allow_nan=False)` written from cached pieces: the model's part and each feature's
# reason prefix are made once, numbers are `float.__repr__` (what json writes for a float) and strings are JSON's own
# ASCII escaping, so the bytes are the same (tests/integration/test_single_score.py compares them on every kind of
# score); anything not of the documented types takes json.dumps itself.
_models: dict[tuple[str, int], str] = {}
_features: dict[str, str] = {}
_labels: dict[str, str] = {}


def _number(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    return float.__repr__(value)


def score_bytes(score: Score) -> bytes:
    """The documented `ScoreResponse` body of `score`, byte for byte `json.dumps(score_body(score), allow_nan=False)`
    (ValueError for a NaN or infinite number, as json.dumps)."""
    freshness = score.feature_freshness_seconds
    if (
        type(score.score) is not float
        or type(score.transaction_id) is not str
        or (freshness is not None and type(freshness) is not float)
    ):
        return _dumped(score)
    model = score.model
    key = (model.name, model.version)
    middle = _models.get(key)
    if middle is None:
        if type(model.name) is not str or type(model.version) is not int or len(_models) > 64:
            return _dumped(score)
        middle = _models[key] = (
            f', "model": {{"name": {_string(model.name)}, "version": {model.version!r}}}, "reasons": ['
        )
    label = _labels.get(score.label)
    if label is None:
        if type(score.label) is not str or len(_labels) > 16:
            return _dumped(score)
        label = _labels[score.label] = _string(score.label)
    parts = ['{"transaction_id": ', _string(score.transaction_id), ', "score": ', _number(score.score), ', "label": ',
             label, middle]  # fmt: skip
    for i, (feature, value, contribution) in enumerate(score.reasons):
        opening = _features.get(feature)
        if opening is None:
            if type(feature) is not str or len(_features) > 4096:
                return _dumped(score)
            opening = _features[feature] = f'{{"feature": {_string(feature)}, "value": '
        if type(contribution) is not float or (value is not None and type(value) is not float):
            return _dumped(score)
        parts += [", " if i else "", opening, "null" if value is None else _number(value), ', "contribution": ',
                  _number(contribution), "}"]  # fmt: skip
    parts += ['], "feature_freshness_seconds": ', "null" if freshness is None else _number(freshness),
              ', "uncertain_reasons": ', _strings(score.uncertain_reasons), "}"]  # fmt: skip
    return "".join(parts).encode()


def _strings(values: list[str]) -> str:
    if not values:
        return "[]"
    return "[" + ", ".join(_string(v) if type(v) is str else json.dumps(v) for v in values) + "]"


def _dumped(score: Score) -> bytes:
    return json.dumps(fraud.score_body(score), allow_nan=False).encode()
