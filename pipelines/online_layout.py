"""Feast's Redis online-store layout, encoded with Feast's own helpers (one place for the reader and the writers).

A feature view row of an entity lives in the Redis hash `serialize_entity_key(entity) + project`: one field per
feature, `mmh3("view:feature")`, holding a serialized ValueProto, and `_ts:view` holding a Timestamp proto.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

KEY_SERIALIZATION_VERSION = 3  # feature_store.yaml: entity_key_serialization_version
# Feast cannot look up a null join key. No event carries an empty id (validation refuses it), so looking up "" finds
# nothing: the features of a missing device or IP come back null, as they should.
ABSENT_KEY = ""


def entity_key(project: bytes, join_key: str, value: str, version: int = KEY_SERIALIZATION_VERSION) -> bytes:
    entity = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])
    return bytes(serialize_entity_key(entity, entity_key_serialization_version=version)) + project


@lru_cache(maxsize=4096)
def feature_field(view: str, feature: str) -> bytes:
    return bytes(_mmh3(f"{view}:{feature}"))


def ts_field(view: str) -> str:
    return f"_ts:{view}"


def encode_value(value: Any, dtype: str) -> bytes:
    if value is None:
        proto = Value()
    elif dtype == "int64":
        proto = Value(int64_val=int(value))
    elif dtype == "float64":
        proto = Value(double_val=float(value))
    else:
        proto = Value(string_val=str(value))
    return bytes(proto.SerializeToString())


def decode_value(raw: bytes | None) -> Any:
    if not raw:
        return None
    proto = Value()
    proto.ParseFromString(raw)
    kind = proto.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(proto, kind)


def encode_ts(epoch_ms: int) -> bytes:
    return bytes(Timestamp(seconds=epoch_ms // 1000, nanos=(epoch_ms % 1000) * 1_000_000).SerializeToString())


def decode_ts(raw: bytes | None) -> float | None:
    if not raw:
        return None
    ts = Timestamp()
    ts.ParseFromString(raw)
    seconds = ts.seconds + ts.nanos / 1e9
    return seconds if seconds > 0 else None


# ------------------------------------------------------------------------------------------ vectorised encoders
# The bulk materializer writes millions of values: one protobuf message per value costs a few microseconds in Python,
# so these build the very same bytes for whole Arrow columns at once (numpy for the fixed-width parts, Arrow compute
# kernels for concatenation). tests/integration/test_materialize.py holds them byte-equal to Feast's encoding.
# A null (and, as Feast does, a NaN double) is an empty Value: b"".

_INT64_TAG = b"\x20"  # Value.int64_val = 4, varint
_DOUBLE_TAG = b"\x29"  # Value.double_val = 5, fixed64
_STRING_TAG = b"\x12"  # Value.string_val = 2, length-delimited
_SECONDS_TAG = b"\x08"  # Timestamp.seconds = 1, varint
_NANOS_TAG = b"\x10"  # Timestamp.nanos = 2, varint
_STRING_VALUE_TYPE = 2  # feast.value_type.ValueType.STRING, as serialize_entity_key writes it
_EMPTY = pa.scalar(b"", pa.binary())
_POSITIONS = np.arange(16, dtype=np.int32)


def binary_array(data: np.ndarray, lengths: np.ndarray) -> pa.BinaryArray:
    """An Arrow binary array of consecutive pieces of `data` (uint8) with the given byte lengths."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.BinaryArray.from_buffers(
        pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data))]
    )


def _varint_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf base-128 varints of int64 values as (N, 10) bytes with continuation bits, and each one's length.

    Negatives are their 10-byte two's complement, as protobuf writes int64.
    """
    unsigned = np.asarray(values).astype(np.int64, copy=False).view(np.uint64)
    groups = np.empty((len(unsigned), 10), dtype=np.uint8)
    lengths = np.ones(len(unsigned), dtype=np.int32)
    rest = unsigned.copy()
    for i in range(10):
        groups[:, i] = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
        if i < 9:
            lengths += rest != 0
    groups |= np.where(_POSITIONS[None, :10] < (lengths - 1)[:, None], np.uint8(0x80), np.uint8(0))
    return groups, lengths


def varints(values: np.ndarray) -> pa.BinaryArray:
    """Protobuf base-128 varints of int64 values, one binary value each."""
    values = np.asarray(values)
    if len(values) and values.min() >= 0 and values.max() < 0x80:  # string lengths, counts: one byte each
        return binary_array(values.astype(np.uint8), np.ones(len(values), dtype=np.int32))
    groups, lengths = _varint_groups(values)
    return binary_array(groups[_POSITIONS[None, :10] < lengths[:, None]], lengths)


def _when(valid: pa.Array | np.ndarray, value: pa.Array) -> pa.Array:
    """`value` where `valid`, b"" elsewhere."""
    mask = valid if isinstance(valid, pa.Array) else pa.array(valid, pa.bool_())
    return pc.if_else(mask, value, _EMPTY)


def encode_values(column: pa.Array, dtype: str) -> pa.Array:
    """`encode_value` of every value of an Arrow column: serialized ValueProto bytes, b"" for null."""
    if dtype == "int64":
        ints = pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        encoded = pc.binary_join_element_wise(pa.scalar(_INT64_TAG), varints(ints), b"")
        return _when(column.is_valid(), encoded) if column.null_count else encoded
    if dtype == "float64":
        doubles = pc.fill_null(column.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        fixed = np.empty((len(doubles), 9), dtype=np.uint8)
        fixed[:, 0] = _DOUBLE_TAG[0]
        fixed[:, 1:] = np.ascontiguousarray(doubles, dtype="<f8").view(np.uint8).reshape(-1, 8)
        lengths = np.where(np.isnan(doubles), 0, 9).astype(np.int32)
        return binary_array(fixed[lengths > 0], lengths)
    if dtype == "string":
        raw = column.cast(pa.binary())
        lengths = pc.fill_null(pc.binary_length(raw), 0).to_numpy(zero_copy_only=False)
        encoded = pc.binary_join_element_wise(pa.scalar(_STRING_TAG), varints(lengths), raw, b"")
        return pc.fill_null(encoded, _EMPTY)
    raise ValueError(f"no vectorised ValueProto encoder for dtype {dtype!r} (int64, float64 and string are)")


def encode_timestamps(epoch_us: np.ndarray) -> pa.Array:
    """Serialized google.protobuf.Timestamp of epoch microseconds, as Feast's `Timestamp.FromDatetime` writes them.

    [0x08, varint seconds] unless seconds is 0, then [0x10, varint nanos] unless nanos is 0: laid out in one
    (N, 22) byte matrix and kept where a mask says, the hottest encoder (one per row of every view).
    """
    micros = np.asarray(epoch_us, dtype=np.int64)
    seconds = micros // 1_000_000
    nanos = (micros % 1_000_000) * 1000
    second_groups, second_lengths = _varint_groups(seconds)
    nano_groups, nano_lengths = _varint_groups(nanos)
    matrix = np.empty((len(micros), 22), dtype=np.uint8)
    matrix[:, 0] = _SECONDS_TAG[0]
    matrix[:, 1:11] = second_groups
    matrix[:, 11] = _NANOS_TAG[0]
    matrix[:, 12:22] = nano_groups
    keep = np.empty(matrix.shape, dtype=bool)
    has_seconds, has_nanos = (seconds != 0)[:, None], (nanos != 0)[:, None]
    keep[:, :1] = has_seconds
    keep[:, 1:11] = has_seconds & (_POSITIONS[None, :10] < second_lengths[:, None])
    keep[:, 11:12] = has_nanos
    keep[:, 12:22] = has_nanos & (_POSITIONS[None, :10] < nano_lengths[:, None])
    return binary_array(matrix[keep], keep.sum(axis=1, dtype=np.int32))


@lru_cache(maxsize=64)
def key_prefix(join_key: str) -> bytes:
    """Feast's v3 serialized entity key of one string join key, up to the value's length: the key count, the name,
    the STRING value type. The key is this + the value's length (u32 LE) + the value + the project."""
    name = join_key.encode()
    return struct.pack("<III", 1, _STRING_VALUE_TYPE, len(name)) + name + struct.pack("<I", _STRING_VALUE_TYPE)


def entity_keys(project: bytes, join_key: str, values: pa.Array) -> pa.Array:
    """`entity_key` of every string value of an Arrow column (serialization version 3, one join key)."""
    prefix = key_prefix(join_key)
    raw = values.cast(pa.binary())
    if raw.null_count:
        raise ValueError(f"{join_key} holds nulls: Feast cannot serialize a null entity key")
    lengths = pc.binary_length(raw).to_numpy(zero_copy_only=False).astype("<u4")
    length_bytes = binary_array(lengths.view(np.uint8), np.full(len(lengths), 4, dtype=np.int32))
    return pc.binary_join_element_wise(pa.scalar(prefix), length_bytes, raw, pa.scalar(project), b"")
