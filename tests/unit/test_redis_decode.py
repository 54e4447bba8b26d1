"""The single lookup's decoding with its tables of bytes already decoded (`_values_of`, `_stamp_of`): exactly what
`decode_value` / `decode_ts` give, on first sight and on every repeat, and bounded."""

from __future__ import annotations

import math

import pytest
from feast.protos.feast.types.Value_pb2 import BoolList, Null, Value
from google.protobuf.timestamp_pb2 import Timestamp

from inference_api.domain import redis_source
from inference_api.domain.redis_source import _stamp_of, _values_of
from pipelines.online_layout import decode_ts, decode_value


def _cells() -> list[bytes | None]:
    protos = [Value(double_val=v) for v in (0.0, -0.0, 1.5, math.inf, -math.inf)]
    protos += [Value(int64_val=v) for v in (0, 1, -1, 2**63 - 1, -(2**63))]
    protos += [Value(string_val=v) for v in ("", "USD", "é" * 40)]
    protos += [Value(float_val=3.5), Value(int32_val=-7), Value(bool_val=True), Value(bool_val=False)]
    protos += [Value(null_val=Null.NULL), Value(), Value(bool_list_val=BoolList(val=[True, False]))]
    return [None, b"", *(p.SerializeToString() for p in protos)]


def _same(got: object, want: object) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return got == want and math.copysign(1, got) == math.copysign(1, want)
    return type(got) is type(want) and got == want


def test_cached_values_equal_feasts_decoder_first_and_repeated() -> None:
    redis_source._decoded_values.clear()
    cells = _cells()
    for _ in range(3):  # first sight (decoded), then from the table, in another order too
        for order in (cells, cells[::-1]):
            got = _values_of(list(order))
            for cell, value in zip(order, got, strict=True):
                assert _same(value, None if cell is None else decode_value(cell)), (cell, value)
    nan = Value(double_val=math.nan).SerializeToString()
    assert all(math.isnan(v) for v in _values_of([nan, nan]))
    # a list (Feast gives its message) is mutable: decoded every time, never shared between records
    lists = [c for c in cells if c and type(decode_value(c)) not in (float, int, str, bool, type(None))]
    assert lists and all(c not in redis_source._decoded_values for c in lists)
    first, second = _values_of(lists), _values_of(lists)
    assert first == second and first[0] is not second[0]


def test_cached_stamps_equal_feasts_decoder() -> None:
    redis_source._decoded_stamps.clear()
    pairs = ((1_764_633_600, 0), (1_764_633_600, 123_000_000), (0, 0), (-5, 0))
    cells: list[bytes | None] = [None, b"", *(Timestamp(seconds=s, nanos=n).SerializeToString() for s, n in pairs)]
    for _ in range(2):
        for cell in cells:
            assert _stamp_of(cell) == (None if cell is None else decode_ts(cell)), cell


def test_the_tables_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_source, "_CACHED", 8)
    redis_source._decoded_values.clear()
    redis_source._decoded_stamps.clear()
    cells = [Value(int64_val=i).SerializeToString() for i in range(50)]
    assert _values_of(list(cells)) == list(range(50))
    assert len(redis_source._decoded_values) <= 8
    assert _values_of(list(cells)) == list(range(50))
    stamps = [Timestamp(seconds=1_700_000_000 + i).SerializeToString() for i in range(50)]
    assert [_stamp_of(s) for s in stamps] == [1_700_000_000.0 + i for i in range(50)]
    assert len(redis_source._decoded_stamps) <= 8


def test_the_lookup_command_is_redis_pys_bytes() -> None:
    from redis.asyncio.connection import Connection

    from inference_api.domain.redis_source import evalsha_command

    connection = Connection()
    sha = "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
    for keys in ([], [b"k"], [b"\x00\x01binary\r\nkey" * 3, b"x" * 7000, b""], [b"%d" % i for i in range(12)]):
        assert evalsha_command(sha, keys) == b"".join(connection.pack_command("EVALSHA", sha, len(keys), *keys))
