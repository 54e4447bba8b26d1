"""Request-time (on-demand) features: computed from the transaction being scored and its card's features.

Pure, vectorized over pandas columns, so that Feast's on-demand feature view and the inference API compute them
with the same code.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

REQUEST_TIME_FEATURES: dict[str, str] = {
    "amount_to_card_mean_7d": "float64",
    "hour_of_day_utc": "int64",
    "day_of_week_utc": "int64",
}


MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday is 0)


def request_time_arrays(
    amount: np.ndarray, event_time_ms: np.ndarray, card_amount_mean_7d: np.ndarray
) -> dict[str, np.ndarray]:
    """The definition, on float arrays (NaN for unknown): amount / card_amount_mean_7d (NaN when the mean is unknown
    or not positive), hour of day and weekday (Monday 0) in UTC. The API calls it directly (no pandas per request)."""
    amount = np.asarray(amount, dtype=np.float64)
    mean = np.asarray(card_amount_mean_7d, dtype=np.float64)
    ms = np.asarray(event_time_ms, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(mean > 0, amount / mean, np.nan)
    return {
        "amount_to_card_mean_7d": ratio,
        "hour_of_day_utc": np.floor(np.mod(ms, MS_PER_DAY) / MS_PER_HOUR),
        "day_of_week_utc": np.mod(np.floor(ms / MS_PER_DAY) + EPOCH_WEEKDAY, 7),
    }


_NAN = float("nan")


def _float(value: Any) -> float:
    """A value as numpy's float64 conversion reads it (None: NaN; ints, bools and numeric strings converted)."""
    return _NAN if value is None else float(value)


def request_time_row(amount: Any, event_time_ms: Any, card_amount_mean_7d: Any) -> dict[str, float]:
    """`request_time_arrays` of one row, in plain Python (the single score's few rows, where numpy's arrays in and
    out cost more than the arithmetic): the same float64 values (IEEE division, Python's float `%`
    and numpy's `np.mod` take the divisor's sign alike, floor of a finite float is exact), NaN where numpy gives NaN.
    tests/unit/test_scoring_rows.py holds the two equal bit for bit, on edge values too."""
    amount, ms, mean = _float(amount), _float(event_time_ms), _float(card_amount_mean_7d)
    ratio = amount / mean if mean > 0 else _NAN
    if math.isfinite(ms):
        hour = float(math.floor((ms % MS_PER_DAY) / MS_PER_HOUR))
        day = (float(math.floor(ms / MS_PER_DAY)) + EPOCH_WEEKDAY) % 7
    else:  # numpy: NaN for NaN, and for an infinity np.mod's NaN with its sign bit set
        hour = day = _NAN if math.isnan(ms) else -_NAN
    return {"amount_to_card_mean_7d": ratio, "hour_of_day_utc": hour, "day_of_week_utc": day}


def request_time_features(amount: pd.Series, event_time_ms: pd.Series, card_amount_mean_7d: pd.Series) -> pd.DataFrame:
    """The same features as a DataFrame, for Feast's pandas on-demand feature view."""
    arrays = request_time_arrays(
        pd.to_numeric(amount, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
        pd.to_numeric(event_time_ms, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
        pd.to_numeric(card_amount_mean_7d, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan),
    )
    out = pd.DataFrame(
        {
            "amount_to_card_mean_7d": arrays["amount_to_card_mean_7d"],
            "hour_of_day_utc": pd.array(arrays["hour_of_day_utc"], dtype="Float64").astype("Int64"),
            "day_of_week_utc": pd.array(arrays["day_of_week_utc"], dtype="Float64").astype("Int64"),
        },
        index=amount.index,
    )
    return out
