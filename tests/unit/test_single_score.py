"""The single score's reasons order (`scoring.top_positions`): numpy's stable argsort of the negated row; the
lean route's body writer (routes/fast_score.py `score_bytes`): json.dumps's bytes for every kind of value."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from inference_api.domain.scoring import Reason, Score, top_positions
from inference_api.routes.fast_score import score_bytes
from inference_api.routes.fraud import score_body


def test_top_positions_pick_as_a_stable_argsort_does_ties_and_nan_included() -> None:
    rng = np.random.default_rng(5)
    rows = [rng.normal(size=12).tolist() for _ in range(200)]
    rows += [rng.integers(-2, 3, size=12).astype(float).tolist() for _ in range(200)]  # many ties
    rows += [[1.0, float("nan"), 1.0, -0.5, float("nan"), 2.0], [float("nan")] * 4, [0.0, -0.0, 0.0]]
    for row in rows:
        for count in (0, 1, 3, 20):
            expected = np.argsort(-np.asarray(row), kind="stable")[:count].tolist()
            assert top_positions(row, count) == expected, (row, count)


def _score(**fields: Any) -> Score:
    model: Any = SimpleNamespace(name="fraud", version=3)
    values: dict[str, Any] = {"transaction_id": "tx-1", "score": 0.25, "label": "legit", "model": model,
                              "reasons": [Reason("amount", 12.0, 0.5), Reason("card_txn_count_1h", None, -1e-07)],
                              "feature_freshness_seconds": 3.5, "uncertain_reasons": []}  # fmt: skip
    return Score(**{**values, **fields})


def test_the_body_is_json_dumps_bytes_for_every_kind_of_value() -> None:
    scores = [
        _score(),
        _score(transaction_id='quo"te\\ \u00e9t\u00e9 \U0001f600 \n', label="uncertain",
               uncertain_reasons=["card features for 'c\u00e9' are 41.0 days old", "no device"]),
        _score(score=1e-300, reasons=[], feature_freshness_seconds=None),
        _score(score=0.1 + 0.2, reasons=[Reason("a", 1e22, 123456789.0), Reason("b", -0.0, 5e-324)]),
        _score(score=np.float64(0.5)), _score(reasons=[Reason("amount", np.float64(2.0), 0.1)]),
        _score(model=SimpleNamespace(name="n\u00e4me", version=12)), _score(feature_freshness_seconds=0),
    ]  # fmt: skip
    for score in scores:
        assert score_bytes(score) == json.dumps(score_body(score), allow_nan=False).encode(), score


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_number_json_cannot_write_fails_as_json_dumps_fails(bad: float) -> None:
    for score in (
        _score(score=bad),
        _score(reasons=[Reason("amount", bad, 0.1)]),
        _score(feature_freshness_seconds=bad),
    ):
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            json.dumps(score_body(score), allow_nan=False)
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            score_bytes(score)
