"""Feast's Redis online-store layout, encoded with Feast's own helpers (one place for the reader and the writers).

A feature view row of an entity lives in the Redis hash `serialize_entity_key(entity) + project`: one field per
feature, `mmh3("view:feature")`, holding a serialized ValueProto, and `_ts:view` holding a Timestamp proto.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

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
