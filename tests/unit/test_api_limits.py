"""Input limits of the HTTP API: every over-long, out-of-range or oversized input is a SPEC error naming the field.

These run on the app without its lifespan (no Redis, no model): each rejection happens before a request reaches
the scoring service, which is the point of the limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from core.settings import Settings
from inference_api.app import create_app
from inference_api.domain.scoring import record_from_event
from pipelines.events import MAX_EPOCH_MS

EVENT = {"transaction_id": "tx_1", "card_id": "c_1", "merchant_id": "m_1", "amount": 12.5, "currency": "USD",
         "merchant_category": "5411", "country": "US", "event_timestamp": "2026-11-25T12:00:00Z"}  # fmt: skip


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    """The app without its lifespan (TestClient outside `with`): requests that pass validation are not under test."""
    app = create_app(Settings(home=tmp_path, max_batch=4, max_body_bytes=4096))
    app.state.scoring = None
    return TestClient(app, raise_server_exceptions=False)


def invalid(response: httpx.Response, field: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(field), error["message"]
    assert "Traceback" not in response.text
    return error


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"transaction_id": "x" * 65}, "transaction_id"),
        ({"transaction_id": ""}, "transaction_id"),
        ({"transaction": {**EVENT, "card_id": "c" * 129}}, "transaction.card_id"),
        ({"transaction": {**EVENT, "transaction_id": "t" * 65}}, "transaction.transaction_id"),
        ({"transaction": {**EVENT, "amount": -0.01}}, "transaction.amount"),
        ({"transaction": {**EVENT, "amount": 1e13}}, "transaction.amount"),
        ({"transaction": {**EVENT, "amount": True}}, "transaction.amount"),  # a boolean is never a number
        ({"transaction": {**EVENT, "amount": "12.50"}}, "transaction.amount"),  # nor is text (as the stream's rule)
        ({"transaction": {**EVENT, "event_timestamp": True}}, "transaction.event_timestamp"),
        ({"transaction": {**EVENT, "event_timestamp": MAX_EPOCH_MS + 1}}, "transaction.event_timestamp"),
        (
            {"transaction": {**EVENT, "event_timestamp": "2026-11-25T12:00:00.1" + "0" * 40 + "Z"}},
            "transaction.event_timestamp",
        ),
        ({"transaction": {**EVENT, "currency": "usd"}}, "transaction.currency"),
    ],
)
def test_limits_of_a_score_request(client: TestClient, body: dict[str, Any], field: str) -> None:
    invalid(client.post("/v1/fraud/score", json=body), field)


@pytest.mark.parametrize("number", [b"Infinity", b"NaN", b"-Infinity", b"1e400"])
def test_non_finite_amounts_are_invalid_requests(client: TestClient, number: bytes) -> None:
    event = str(EVENT).replace("'", '"').replace("12.5", "AMOUNT").encode().replace(b"AMOUNT", number)
    response = client.post("/v1/fraud/score", content=b'{"transaction": ' + event + b"}",
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request", response.text


def test_a_batch_over_the_limit_names_items(client: TestClient) -> None:
    error = invalid(client.post("/v1/fraud/score:batch", json={"items": [{"transaction_id": "t"}] * 5}), "items")
    assert error["details"]["limit"] == 4


def test_predict_rows_over_the_limit_name_rows(client: TestClient) -> None:
    error = invalid(client.post("/v1/models/fraud/predict", json={"rows": [{"transaction_id": "t"}] * 5}), "rows")
    assert error["details"] == {"field": "rows", "limit": 4, "rows": 5}


def test_a_body_over_the_limit_is_payload_too_large(client: TestClient) -> None:
    response = client.post("/v1/fraud/score:batch", json={"items": [{"transaction_id": "t" * 60}] * 100})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_body_that_is_not_utf8_is_an_invalid_request(client: TestClient) -> None:
    response = client.post("/v1/fraud/score", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    invalid(response, "body")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v2/models/-fraud/ready", "path.name"),
        ("/v2/models/" + "m" * 65 + "/ready", "path.name"),
        ("/v2/models/fraud/versions/0/ready", "path.version"),
        ("/v2/models/fraud/versions/2147483648/ready", "path.version"),
    ],
)
def test_path_parameters_are_bounded(client: TestClient, path: str, field: str) -> None:
    invalid(client.get(path), field)


def test_an_inline_event_with_epoch_milliseconds_is_scored_like_rfc3339() -> None:
    """All-integer event times once made the text parser see an all-null column and fail (found by the fuzz test)."""
    by_text = record_from_event(EVENT)
    by_ms = record_from_event({**EVENT, "event_timestamp": by_text.event_time_ms})
    assert by_ms == by_text


def test_declared_extra_fields_of_an_inline_event_are_checked_and_kept() -> None:
    """Fields the Feast repo declares beyond SPEC's are typed like the pipelines type them; others are ignored."""
    from core.errors import InvalidInput

    extra = (("customer_id", "string"), ("loyalty_points", "float64"))
    fields = ("card_id", "amount", "customer_id", "loyalty_points")
    record = record_from_event({**EVENT, "customer_id": "cu_9", "loyalty_points": 3, "note": "x"}, fields, extra)
    assert record.fields["customer_id"] == "cu_9" and record.fields["loyalty_points"] == 3.0
    assert "note" not in record.fields
    missing = record_from_event(EVENT, fields, extra)  # declared fields are nullable
    assert missing.fields["customer_id"] is None and missing.fields["loyalty_points"] is None
    with pytest.raises(InvalidInput, match=r"transaction\.loyalty_points"):
        record_from_event({**EVENT, "loyalty_points": "many"}, fields, extra)


def test_a_batch_past_the_admission_bound_is_shed_before_any_work(client: TestClient) -> None:
    """No scoring service at all here: the refusal happens before the batch reaches it."""
    from inference_api.domain.admission import Admission

    admission = Admission(limit=4)
    client.app.state.batch_admission = admission  # type: ignore[attr-defined]
    with admission.admit(3):
        response = client.post("/v1/fraud/score:batch", json={"items": [{"transaction_id": "t"}] * 2})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "overloaded"
    assert int(response.headers["retry-after"]) >= 1
