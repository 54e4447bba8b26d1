"""score:batch's route (`routes/fraud.py` `BatchRoute`): a plain body of ids skips FastAPI's per-item validation,
after the same key check; every other body, and every invalid one, is FastAPI's as before (the same 422s). On the
app without its lifespan, as tests/unit/test_api_limits.py: nothing here reaches a scoring service."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.keys import KeyStore, Scope
from core.settings import Settings
from inference_api.app import create_app
from inference_api.routes.fraud import plain_ids

JSON = "application/json"


@pytest.mark.parametrize(
    ("body", "ids"),
    [
        ({"items": [{"transaction_id": "t1"}, {"transaction_id": "t1"}, {"transaction_id": "x" * 64}]},
         ["t1", "t1", "x" * 64]),
        ({"items": [{"transaction_id": "ünï"}]}, ["ünï"]),
    ],
)  # fmt: skip
def test_a_plain_body_of_ids_is_read_as_its_ids(body: dict[str, Any], ids: list[str]) -> None:
    assert plain_ids(json.dumps(body).encode(), JSON) == ids
    assert plain_ids(json.dumps(body).encode(), "application/json; charset=utf-8") == ids


@pytest.mark.parametrize(
    "body",
    [
        b'{"items": []}',  # too few: FastAPI's 422
        json.dumps({"items": [{"transaction_id": "t"}] * 10_001}).encode(),  # more than the model's bound
        b'{"items": [{"transaction_id": ""}]}',
        json.dumps({"items": [{"transaction_id": "x" * 65}]}).encode(),
        b'{"items": [{"transaction_id": 5}]}',
        b'{"items": [{"transaction_id": null}]}',
        b'{"items": [{"transaction_id": "t", "transaction": null}]}',  # valid, but FastAPI's to validate
        b'{"items": [{"transaction": {"transaction_id": "t"}}]}',
        b'{"items": [{"transaction_id": "t"}], "extra": 1}',
        b'{"items": {"transaction_id": "t"}}',
        b'[{"transaction_id": "t"}]',
        b'{"items": ["t"]}',
        b'{"items": [{"transaction_id": "t"}',
        b"\xff\xfe{",
        b"",
    ],
)
def test_anything_else_is_left_to_fastapi(body: bytes) -> None:
    assert plain_ids(body, JSON) is None


def test_a_plain_body_needs_a_json_content_type() -> None:
    body = b'{"items": [{"transaction_id": "t"}]}'
    assert plain_ids(body, None) is None and plain_ids(body, "text/plain") is None


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = Settings(home=tmp_path, max_batch=4)
    app = create_app(settings)
    app.state.scoring = None
    return TestClient(app, raise_server_exceptions=False)


def test_a_plain_body_without_a_key_is_refused_like_any_other(client: TestClient, tmp_path: Path) -> None:
    keys = KeyStore(client.app.state.settings.keys_file)  # type: ignore[attr-defined]
    _, predict_key = keys.create("notebook", [Scope.predict])
    client.app.state.keys = keys  # type: ignore[attr-defined]
    plain = {"items": [{"transaction_id": "t"}]}
    validated = {"items": [{"transaction_id": "t", "transaction": None}]}  # FastAPI's path
    for body in (plain, validated):
        missing = client.post("/v1/fraud/score:batch", json=body)
        assert missing.status_code == 401, missing.text
        wrong = client.post("/v1/fraud/score:batch", json=body, headers={"authorization": f"Bearer {predict_key}"})
        assert wrong.status_code == 403, wrong.text
    assert missing.json() == client.post("/v1/fraud/score:batch", json=plain).json()


def test_the_item_limit_holds_on_the_plain_path(client: TestClient) -> None:
    response = client.post("/v1/fraud/score:batch", json={"items": [{"transaction_id": "t"}] * 5})
    assert response.status_code == 422 and response.json()["error"]["details"]["limit"] == 4


def test_the_route_is_still_described_by_its_models(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/fraud/score:batch"]["post"]
    assert operation["requestBody"]["content"][JSON]["schema"] == {"$ref": "#/components/schemas/BatchRequest"}
    assert operation["responses"]["200"]["content"][JSON]["schema"] == {"$ref": "#/components/schemas/BatchResponse"}
