"""Late-arriving labels: most fraud gets labeled fraud, some genuine traffic gets confirmed genuine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipelines.generate.batch import IntArray
from pipelines.generate.config import DAY_MS, GenerateConfig

MIN_DELAY_MS = DAY_MS
MAX_DELAY_MS = 30 * DAY_MS  # exclusive


@dataclass(frozen=True)
class Labels:
    """Labels of a chunk: which rows (ascending), their verdict and arrival time."""

    rows: IntArray
    is_fraud: npt.NDArray[np.bool_]
    label_ts: IntArray

    def between(self, first_row: int, end_row: int) -> Labels:
        """The labels of rows [first_row, end_row)."""
        lo, hi = np.searchsorted(self.rows, [first_row, end_row])
        return Labels(self.rows[lo:hi], self.is_fraud[lo:hi], self.label_ts[lo:hi])


def sample_labels(
    rng: np.random.Generator, config: GenerateConfig, is_fraud: npt.NDArray[np.bool_], event_ts: IntArray
) -> Labels:
    """Draw which transactions get a label and when; labels arriving at or after `config.end` are dropped.

    Delays lie in [1, 30) days: fraud reports cluster early (customers call within days, chargebacks
    take weeks), confirmations of genuine traffic are spread uniformly.
    """
    n = len(is_fraud)
    labeled = rng.random(n) < np.where(is_fraud, config.fraud_label_rate, config.genuine_label_rate)
    u = rng.random(n)
    shape = np.where(is_fraud, u**1.6, u)
    delay = MIN_DELAY_MS + np.floor(shape * (MAX_DELAY_MS - MIN_DELAY_MS)).astype(np.int64)
    label_ts = event_ts + delay
    rows = np.flatnonzero(labeled & (label_ts < config.end_ms))
    return Labels(rows, is_fraud[rows], label_ts[rows])
