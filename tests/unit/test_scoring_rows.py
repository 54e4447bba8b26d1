"""`request_time.request_time_row` (the single score's request-time features in plain Python) gives, bit for bit, what
`request_time_arrays` gives for the same row: `build_rows` takes it for 1 to 8 rows and numpy above."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from pipelines.features.request_time import request_time_arrays, request_time_row


def _bits(value: float) -> int:
    return int(np.array([value], dtype=np.float64).view(np.int64)[0])


def test_one_row_equals_the_arrays_bit_for_bit() -> None:
    rng = np.random.default_rng(11)
    amounts: list[Any] = [None, 0, 1, 12.5, -3.25, 1e-300, 1e300, float("nan"), float("inf"), True, "7.5"]
    amounts += rng.lognormal(3, 1.5, 40).tolist()
    stamps: list[Any] = [None, 0, -1, 86_399_999, 86_400_000, -86_400_001, 1_762_000_000_000, 2**53, 1e300, -0.0]
    stamps += [float("nan"), float("inf"), -float("inf"), 1_762_000_000_000.5]
    stamps += rng.integers(-4_102_444_800_000, 4_102_444_800_000, 60).tolist()
    means: list[Any] = [None, 0, 0.0, -0.0, -2.0, 4.0, 1e-310, float("inf"), float("nan"), 3]
    means += rng.lognormal(3, 1, 20).tolist()
    rows = list(itertools.product(amounts[:12], stamps, means[:12]))
    rows += list(zip(amounts * 10, stamps * 10, means * 10, strict=False))
    with np.errstate(invalid="ignore", over="ignore"):
        arrays = request_time_arrays(
            np.array([r[0] for r in rows], dtype=np.float64),
            np.array([r[1] for r in rows], dtype=np.float64),
            np.array([r[2] for r in rows], dtype=np.float64),
        )
    for i, (amount, ms, mean) in enumerate(rows):
        got = request_time_row(amount, ms, mean)
        assert list(got) == list(arrays), got
        for name, column in arrays.items():
            expected = float(column[i])
            assert type(got[name]) is float
            assert _bits(got[name]) == _bits(expected), (
                name,
                amount,
                ms,
                mean,
                got[name],
                expected,
            )
