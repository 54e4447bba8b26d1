"""Request-time (on-demand) features: computed from the transaction being scored and its card's features.

Pure, vectorized over pandas columns, so that Feast's on-demand feature view and the inference API compute them
with the same code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

REQUEST_TIME_FEATURES: dict[str, str] = {
    "amount_to_card_mean_7d": "float64",
    "hour_of_day_utc": "int64",
    "day_of_week_utc": "int64",
}


def request_time_features(amount: pd.Series, event_time_ms: pd.Series, card_amount_mean_7d: pd.Series) -> pd.DataFrame:
    """amount / card_amount_mean_7d (null when the mean is unknown or 0), hour of day and weekday (Monday 0), UTC."""
    mean = pd.to_numeric(card_amount_mean_7d, errors="coerce").astype("float64")
    ratio = pd.to_numeric(amount, errors="coerce").astype("float64") / mean.where(mean > 0)
    when = pd.to_datetime(pd.to_numeric(event_time_ms, errors="coerce"), unit="ms", utc=True)
    out = pd.DataFrame(
        {
            "amount_to_card_mean_7d": ratio.replace([np.inf, -np.inf], np.nan),
            "hour_of_day_utc": when.dt.hour.astype("Int64"),
            "day_of_week_utc": when.dt.dayofweek.astype("Int64"),
        }
    )
    out.index = amount.index
    return out
