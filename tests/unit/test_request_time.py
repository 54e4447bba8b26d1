"""Request-time features: the numpy definition agrees with calendar arithmetic, and the pandas view with it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.features.request_time import request_time_arrays, request_time_features


def test_hour_and_weekday_match_the_calendar() -> None:
    ms = np.random.default_rng(0).integers(946_684_800_000, 4_102_444_800_000, 5000)
    arrays = request_time_arrays(np.ones(len(ms)), ms.astype(np.float64), np.ones(len(ms)))
    when = pd.to_datetime(ms, unit="ms", utc=True)
    assert (arrays["hour_of_day_utc"] == when.hour).all()
    assert (arrays["day_of_week_utc"] == when.dayofweek).all()


def test_amount_ratio_and_unknowns() -> None:
    arrays = request_time_arrays(np.array([10.0, 10.0, 10.0, np.nan]), np.zeros(4), np.array([4.0, 0.0, np.nan, 2.0]))
    ratio = arrays["amount_to_card_mean_7d"]
    assert ratio[0] == 2.5 and np.isnan(ratio[1]) and np.isnan(ratio[2]) and np.isnan(ratio[3])


def test_pandas_view_for_feast_equals_the_arrays() -> None:
    frame = request_time_features(
        pd.Series([5.0, 7.0]), pd.Series([1_762_000_000_000, 1_762_086_400_000]), pd.Series([2.0, None])
    )
    assert frame["amount_to_card_mean_7d"].iloc[0] == 2.5 and pd.isna(frame["amount_to_card_mean_7d"].iloc[1])
    assert frame["hour_of_day_utc"].tolist() == [12, 12]
    assert frame["day_of_week_utc"].tolist() == [5, 6]  # 2025-11-01 was a Saturday
