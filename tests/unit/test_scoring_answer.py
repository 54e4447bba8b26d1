"""score:batch's columnar answer (`routes/fraud.py` `batch_body`): byte for byte the body the per-item path writes
(a dict per item through pydantic's serializer), for every kind of value an item can hold."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pydantic_core
import pytest

from core.errors import FraudserveError
from inference_api.domain.scoring import ScoredBatch, TransactionNotFound
from inference_api.routes.fraud import batch_body, error_body, score_body
from inference_api.schemas import BatchResponse


def per_item_body(batch: ScoredBatch) -> bytes:
    """The answer as the route wrote it before: a dict per item, serialized once by pydantic."""
    results: list[dict[str, Any]] = []
    for tid, outcome in zip(batch.ids, batch.outcomes(), strict=True):
        if isinstance(outcome, FraudserveError):
            results.append({"transaction_id": tid, "result": None, "error": error_body(outcome)})
        else:
            results.append({"transaction_id": outcome.transaction_id, "result": score_body(outcome), "error": None})
    return pydantic_core.to_json({"results": results}, inf_nan_mode="null")


def batch(ids: list[str], found: list[int], top: int, seed: int = 3) -> ScoredBatch:
    rng = np.random.default_rng(seed)
    model: Any = SimpleNamespace(name="fraud", version=7)
    n, width = len(found), 5
    matrix = rng.normal(size=(n, width)) * 10.0 ** rng.integers(-8, 9, size=(n, width))
    matrix[rng.uniform(size=matrix.shape) < 0.2] = math.nan
    names = np.array(["amount", "card_txn_count_1h", "merchant_risk", 'ünïcode "quoted", comma', "x"], object)
    scores = [0.0, 1.0, 1e-7, 0.3333333333333333, 5e-324, 0.1 + 0.2, *rng.uniform(size=max(n - 6, 0)).tolist()]
    reasons = None
    if top:
        order = np.argsort(-np.abs(matrix), axis=1)[:, :top]
        at = np.arange(n)[:, None]
        picked = matrix[at, order]
        gains = rng.normal(size=(n, top)) * 1e-3
        gains[:1, :1] = -0.0
        reasons = (names[order], picked, gains)
    freshness = [None if i % 3 == 0 else float(i) * 1.5 + 1e-9 for i in range(n)]
    uncertain = [[] if i % 4 else [f"no card features for card_id 'c{i}'", "older than the TTL"] for i in range(n)]
    labels = ["uncertain" if u else ("highly_suspicious" if i % 2 else "not_fraud") for i, u in enumerate(uncertain)]
    return ScoredBatch(ids, model, "production", found, scores[:n], labels, freshness, uncertain, matrix, reasons)


@pytest.mark.parametrize("top", [3, 1, 0])
def test_every_id_found_is_written_as_the_per_item_path_writes_it(top: int) -> None:
    ids = [f"tx_{i:04d}" for i in range(40)] + ['quote " and, comma', "ünïcode \u2028 \\ backslash", "\x01"]
    scored = batch(ids, list(range(len(ids))), top)
    body = batch_body(scored, SimpleNamespace(error=lambda code: None))
    assert body == per_item_body(scored)
    BatchResponse.model_validate_json(body)


def test_unknown_ids_are_their_own_errors_in_request_order_and_counted() -> None:
    ids = [f"t{i}" for i in range(12)]
    found = [1, 2, 5, 6, 7, 11]
    errors: list[str] = []
    scored = batch(ids, found, 3)
    body = batch_body(scored, SimpleNamespace(error=errors.append))
    assert body == per_item_body(scored)
    assert errors == [TransactionNotFound.code] * 6
    none = batch(ids[:3], [], 3)
    assert batch_body(none, SimpleNamespace(error=errors.append)) == per_item_body(none)
