"""A model's labels for a whole batch of scores (`Thresholds.labels`) are `Thresholds.label` of each score."""

from __future__ import annotations

import numpy as np

from core.models.manifest import Thresholds


def test_labels_of_an_array_are_the_label_of_each_score() -> None:
    """Scores at, just below and just above each threshold, NaN, 0 and 1, in float64 and in float32 (compared in
    float64 as `label` compares them, not with the thresholds rounded to float32)."""
    thresholds = Thresholds(suspicious=0.3, highly_suspicious=0.7)
    edges = [0.3, 0.7, float(np.float32(0.3)), float(np.float32(0.7))]
    scores = [0.0, 1.0, float("nan"), *edges, *np.nextafter(edges, 0.0), *np.nextafter(edges, 1.0)]
    for dtype in (np.float64, np.float32):
        array = np.array(scores, dtype=dtype)
        assert thresholds.labels(array) == [thresholds.label(s) for s in array.tolist()]
    assert set(thresholds.labels(np.array(scores))) == {"not_fraud", "suspicious", "highly_suspicious"}
    assert thresholds.labels(np.empty(0)) == []
