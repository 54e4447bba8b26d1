"""The stream updater writes Feast's ValueProto and Timestamp bytes without protobuf: byte-equal to Feast's."""

from __future__ import annotations

import math
import random

import pytest

from pipelines.online_layout import encode_ts, encode_value
from pipelines.stream.updater import _encoded, _encoded_ts


def test_values_are_the_bytes_protobuf_writes() -> None:
    rnd = random.Random(7)
    ints = [0, 1, -1, 127, 128, 300, 2**31, -(2**31), 2**63 - 1, -(2**63), 1_790_000_000_123, True]
    ints += [rnd.randrange(-(2**63), 2**63) for _ in range(500)]
    floats = [0.0, -0.0, 1.5, -2.25, 1e300, -1e-300, math.inf, -math.inf, 5e-324, 3]
    floats += [rnd.uniform(-1e6, 1e6) for _ in range(500)]
    texts = ["", "c1", "5411", "née", "日本", "a" * 200, 17, 2.5]
    cases = [(v, "int64") for v in ints] + [(v, "float64") for v in floats] + [(v, "string") for v in texts]
    cases += [(None, "int64"), (None, "float64"), (None, "string")]
    for value, dtype in cases:
        assert _encoded(value, dtype) == encode_value(value, dtype), (value, dtype)
    # NaN's bytes: the double as Python holds it, as protobuf copies it
    assert _encoded(math.nan, "float64") == encode_value(math.nan, "float64")


def test_an_int64_out_of_range_is_refused_as_protobuf_refuses_it() -> None:
    with pytest.raises(ValueError):
        _encoded(2**63, "int64")


def test_timestamps_are_the_bytes_protobuf_writes() -> None:
    rnd = random.Random(8)
    times = [0, 1, 999, 1000, 1001, -1, -1000, -1500, 1_790_000_000_000, 1_790_000_000_123]
    times += [rnd.randrange(-(2**40), 2**42) for _ in range(1000)]
    for ms in times:
        assert _encoded_ts(ms) == encode_ts(ms), ms
