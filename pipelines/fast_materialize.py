"""Bulk materialization into Redis: Feast's online layout and write semantics, without Feast's per-row Python.

Feast's local engine turns every row into protobuf messages in Python and sends one HSET per row through redis-py,
after a first round trip that reads each key's stored timestamp: about 10,000 rows/s. This writes the same bytes:

1. DuckDB reads each feature view's Parquet source and keeps each entity's latest row inside [start, end] (Feast's
   `pull_latest_from_table_or_query`: the same filter, the same latest-by-event-timestamp de-duplication).
2. Whole Arrow columns are encoded at once (`pipelines.online_layout`'s vectorised encoders: entity keys, ValueProto
   and Timestamp bytes), and so is the Redis protocol (RESP) of the commands, so no Python runs per row.
3. A Lua script applies Feast's rule per key on the server: a row is written (HSET of `_ts:view` and every feature,
   EXPIRE when `key_ttl_seconds` is set) only when its event time is newer than the `_ts:view` already stored.

Why a script rather than Feast's HMGET-then-HSET: it is one round trip instead of two, and it is atomic, so a row the
stream worker writes between the read and the write can never be overwritten by an older batch row (Feast's two-step
check has that race). One script call covers `rows_per_command` keys; Redis runs nothing else meanwhile, which caps
the pause other clients see to about a millisecond per call (500 rows). The script takes several keys, so this path
is for a single Redis node: `pipelines.materialize` uses Feast's own engine for a cluster or sentinel.

Then the materialized interval is recorded in Feast's registry (`registry.apply_materialization`), as
`FeatureStore.materialize` does, so `feast` sees the views as materialized.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.online_layout import binary_array, encode_timestamps, encode_values, entity_keys, feature_field, ts_field

if TYPE_CHECKING:
    import redis
    from feast import FeatureStore
    from feast.feature_view import FeatureView

# (view, rows done, rows in the view)
Progress = Callable[[str, int, int], None]

# Feast's `online_write_batch` rule for one key, applied atomically by Redis to each key of a call.
# KEYS: entity keys. ARGV: the `_ts:view` field, the key TTL in seconds (0: none), the k feature fields, then one
# string packing every key's row: its serialized Timestamp and its k serialized ValueProtos, each after its length
# (uint32, little-endian). Returns how many keys were written.
# A stored Timestamp of exactly the epoch counts as none (Feast: `if latest_seen_nanos and new <= latest_seen_nanos`).
# Why packed: Redis parses every argument of a command into an object and a script's ARGV into Lua strings; one
# argument for all rows, cut by the `struct` library Redis bundles (one C call per row), costs the server a fifth
# less than 1 + k arguments per row, and the server is the bottleneck. The HSET is unrolled for the view's k
# features (`write_if_newer_script`) rather than built as a table and unpacked per row. Lua strings are interned, so
# `ts == old` (the same row materialized again, the common case) is a pointer comparison that skips decoding.
_WRITE_IF_NEWER = """
local function decode_ts(raw)
  local seconds, nanos, i, n = 0, 0, 1, #raw
  while i <= n do
    local tag = string.byte(raw, i)
    local value, scale = 0, 1
    repeat
      i = i + 1
      local b = string.byte(raw, i)
      value = value + (b % 128) * scale
      scale = scale * 128
    until b < 128
    i = i + 1
    if tag == 8 then
      if value >= 9223372036854775808 then value = value - 18446744073709551616 end
      seconds = value
    elseif tag == 16 then
      nanos = value
    end
  end
  return seconds, nanos
end
local function newer(ts, old)
  if not old or old == '' then return true end
  if ts == old then return false end
  local old_s, old_n = decode_ts(old)
  if old_s == 0 and old_n == 0 then return true end
  local new_s, new_n = decode_ts(ts)
  return new_s > old_s or (new_s == old_s and new_n > old_n)
end
local hset = redis.call
local unpack_row = struct.unpack
local ts_field, ttl = ARGV[1], tonumber(ARGV[2])
@FIELDS@
local rows = ARGV[@ROWS@]
local pos = 1
local written = 0
for i = 1, #KEYS do
  local key = KEYS[i]
  local ts, @VALUES@, after = unpack_row('@FORMAT@', rows, pos)
  pos = after
  if newer(ts, hset('HGET', key, ts_field)) then
    hset('HSET', key, ts_field, ts@PAIRS@)
    if ttl > 0 then
      hset('EXPIRE', key, ttl)
    end
    written = written + 1
  end
end
return written
"""


@lru_cache(maxsize=64)
def write_if_newer_script(features: int) -> str:
    """The write-if-newer script for views of `features` features (ARGV as described above)."""
    numbers = range(1, features + 1)
    fields = "\n".join(f"local f{j} = ARGV[{2 + j}]" for j in numbers)
    return (
        _WRITE_IF_NEWER.replace("@FIELDS@", fields)
        .replace("@ROWS@", str(3 + features))
        .replace("@VALUES@", ", ".join(f"v{j}" for j in numbers))
        .replace("@FORMAT@", "<" + "I4c0" * (1 + features))
        .replace("@PAIRS@", "".join(f", f{j}, v{j}" for j in numbers))
    )


_FEAST_DTYPES = {"Int64": "int64", "Float64": "float64", "String": "string"}


class UnsupportedView(ValueError):
    """A feature view this path cannot write exactly as Feast would: the caller falls back to Feast's engine."""


@dataclass(frozen=True)
class ViewPlan:
    """What the fast path needs of one Feast feature view."""

    view: FeatureView
    name: str
    join_key: str
    path: Path
    timestamp_field: str
    features: tuple[tuple[str, str], ...]  # (feature, "int64" | "float64" | "string"), in the view's order


@dataclass(frozen=True)
class ViewResult:
    rows: int  # latest rows read in the span (one per entity key)
    written: int  # of which newer than what Redis held, hence written


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def plan_views(store: FeatureStore) -> list[ViewPlan]:
    """The views `store.materialize` would write, or UnsupportedView when one needs Feast's general path."""
    from feast.feature_view import FeatureView
    from feast.infra.offline_stores.file_source import FileSource
    from feast.value_type import ValueType

    if store.config.registry.enable_online_feature_view_versioning:
        raise UnsupportedView("versioned online feature views")
    plans = []
    for view in store._get_feature_views_to_materialize(None):
        if type(view) is not FeatureView:
            raise UnsupportedView(f"{view.name} is a {type(view).__name__}")
        source = view.batch_source
        if not isinstance(source, FileSource) or not str(source.path).endswith(".parquet"):
            raise UnsupportedView(f"{view.name}: its batch source is not a Parquet file")
        if source.created_timestamp_column or source.field_mapping:
            raise UnsupportedView(f"{view.name}: created timestamp or field mapping")
        keys = list(view.entity_columns)
        if len(keys) != 1 or keys[0].dtype.to_value_type() != ValueType.STRING:
            raise UnsupportedView(f"{view.name}: the fast path takes one string join key")
        features = []
        for field in view.features:
            dtype = _FEAST_DTYPES.get(str(field.dtype))
            if dtype is None:
                raise UnsupportedView(f"{view.name}.{field.name}: type {field.dtype}")
            features.append((field.name, dtype))
        plans.append(
            ViewPlan(view, view.name, keys[0].name, Path(str(source.path)), source.timestamp_field, tuple(features))
        )
    return plans


def latest_rows(
    con: duckdb.DuckDBPyConnection, plan: ViewPlan, start: datetime, end: datetime, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Each entity's latest row with event time in [start, end]: join key, epoch microseconds, the features.

    When no key repeats in the span (the transaction view: one row per transaction) the rows stream straight from
    the scan; otherwise a window keeps the latest per key, which DuckDB must finish before the first row comes out.
    """
    ts = _quote(plan.timestamp_field)
    key = _quote(plan.join_key)
    features = ", ".join(_quote(name) for name, _ in plan.features)
    span = f"FROM read_parquet($path) WHERE {ts} >= $start::TIMESTAMPTZ AND {ts} <= $end::TIMESTAMPTZ"
    params = {"path": str(plan.path), "start": start.astimezone(UTC), "end": end.astimezone(UTC)}
    ((rows, keys),) = con.execute(f"SELECT count(*), count(DISTINCT {key}) {span}", params).fetchall()
    unique = rows == keys
    latest = "" if unique else f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {ts} DESC) = 1"
    query = f"SELECT {key}::VARCHAR AS __key, epoch_us({ts}) AS __ts_us, {features} {span} {latest}"
    reader: pa.RecordBatchReader = con.sql(query, params=params).to_arrow_reader(batch_rows)
    yield from reader


def _resp_bulk(values: pa.Array) -> pa.Array:
    """Each value as a RESP bulk string: $<length>\\r\\n<bytes>\\r\\n."""
    lengths = pc.cast(pc.cast(pc.binary_length(values), pa.string()), pa.binary())
    crlf = pa.scalar(b"\r\n")
    return pc.binary_join_element_wise(pa.scalar(b"$"), lengths, crlf, values, crlf, pa.scalar(b""))


def _packed(values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Each value's length (uint32, little-endian: the script's `I4c0`) and the value."""
    lengths = pc.binary_length(values).to_numpy(zero_copy_only=False).astype("<u4")
    return binary_array(lengths.view(np.uint8), np.full(len(lengths), 4, dtype=np.int32)), values


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _flat(values: pa.Array) -> tuple[memoryview, np.ndarray]:
    """The concatenated bytes of a binary array and its offsets into them."""
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
    return data, offsets


@dataclass(frozen=True)
class Commands:
    """A batch of rows as ready-to-send RESP: `count` script calls in `payload`."""

    payload: bytes
    count: int
    rows: int


class CommandEncoder:
    """RESP of the write-if-newer script calls for batches of one view's rows."""

    def __init__(self, plan: ViewPlan, project: str, key_ttl_seconds: int | None, rows_per_command: int) -> None:
        self.plan = plan
        self.project = project.encode()
        self.rows_per_command = rows_per_command
        fixed = [
            ts_field(plan.name).encode(),
            str(key_ttl_seconds or 0).encode(),
            *(feature_field(plan.name, name) for name, _ in plan.features),
        ]
        self.fixed_count = len(fixed)
        self.fixed = b"".join(_bulk(v) for v in fixed)
        self.script = _bulk(b"EVAL") + _bulk(write_if_newer_script(len(plan.features)).encode())

    def encode(self, batch: pa.RecordBatch) -> Commands:
        rows = batch.num_rows
        keys = _resp_bulk(entity_keys(self.project, self.plan.join_key, batch.column("__key")))
        timestamps = encode_timestamps(batch.column("__ts_us").to_numpy(zero_copy_only=False))
        columns = [timestamps, *(encode_values(batch.column(name), dtype) for name, dtype in self.plan.features)]
        args = pc.binary_join_element_wise(*(piece for c in columns for piece in _packed(c)), pa.scalar(b""))
        key_data, key_offsets = _flat(keys)
        arg_data, arg_offsets = _flat(args)
        parts: list[bytes | memoryview] = []
        count = 0
        for low in range(0, rows, self.rows_per_command):
            high = min(rows, low + self.rows_per_command)
            n = high - low
            packed = int(arg_offsets[high] - arg_offsets[low])
            parts.append(b"*%d\r\n" % (3 + n + self.fixed_count + 1))
            parts.append(self.script)
            parts.append(_bulk(b"%d" % n))
            parts.append(key_data[key_offsets[low] : key_offsets[high]])
            parts.append(self.fixed)
            parts.append(b"$%d\r\n" % packed)
            parts.append(arg_data[arg_offsets[low] : arg_offsets[high]])
            parts.append(b"\r\n")
            count += 1
        return Commands(b"".join(parts), count, rows)


class PipelinedWriter:
    """Sends batches of commands on one connection from a thread of its own and adds up the script's replies.

    Sending and waiting on Redis release the GIL, so this overlaps with DuckDB and Arrow encoding the next batch in
    the calling thread; the queue is short so that only a few batches are ever held in memory.
    """

    def __init__(self, client: redis.Redis, depth: int = 2) -> None:
        self.client = client
        self.queue: queue.Queue[Commands | None] = queue.Queue(maxsize=depth)
        self.written = 0
        self.error: BaseException | None = None
        self.on_done: Callable[[int], None] | None = None
        self.thread = threading.Thread(target=self._run, name="fast-materialize-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        connection = self.client.connection_pool.get_connection()
        try:
            while (commands := self.queue.get()) is not None:
                connection.send_packed_command([commands.payload], check_health=False)  # type: ignore[no-untyped-call]
                for _ in range(commands.count):
                    self.written += int(connection.read_response())  # type: ignore[no-untyped-call]
                if self.on_done is not None:
                    self.on_done(commands.rows)
        except BaseException as exc:  # handed to the caller by close()
            self.error = exc
            connection.disconnect()  # type: ignore[no-untyped-call]
            while self.queue.get() is not None:  # let the producer finish without blocking
                pass
        finally:
            self.client.connection_pool.release(connection)

    def put(self, commands: Commands) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(commands)

    def close(self) -> int:
        """Wait for everything queued; the number of keys written (newer than what Redis held)."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.written


def redis_client(store: FeatureStore) -> redis.Redis:
    """A redis-py client for the store's online store (single node), from Feast's connection-string form."""
    import redis
    from feast.infra.online_stores.redis import RedisOnlineStore

    config: Any = store.config.online_store
    if getattr(config, "type", None) != "redis" or str(getattr(config.redis_type, "value", "")) != "redis":
        raise UnsupportedView("the fast path writes to a single Redis node (redis_type: redis)")
    nodes, params = RedisOnlineStore._parse_connection_string(config.connection_string)
    return redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)


def write_view(
    store: FeatureStore,
    client: redis.Redis,
    plan: ViewPlan,
    start: datetime,
    end: datetime,
    total: int,
    progress: Progress | None = None,
    batch_rows: int = 100_000,
    rows_per_command: int = 500,
) -> ViewResult:
    """Write one view's latest rows in [start, end] into Redis with the write-if-newer script."""
    config: Any = store.config.online_store
    encoder = CommandEncoder(plan, store.project, config.key_ttl_seconds, rows_per_command)
    writer = PipelinedWriter(client)
    done = 0

    def sent(rows: int) -> None:
        nonlocal done
        done += rows
        if progress is not None:
            progress(plan.name, done, total)

    writer.on_done = sent
    rows = 0
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for batch in latest_rows(con, plan, start, end, batch_rows):
            if batch.num_rows:
                rows += batch.num_rows
                writer.put(encoder.encode(batch))
    finally:
        con.close()
        written = writer.close()
    return ViewResult(rows, written)


def fast_materialize(
    store: FeatureStore,
    start: datetime,
    end: datetime,
    totals: dict[str, int],
    progress: Progress | None = None,
) -> dict[str, ViewResult]:
    """Every view `store.materialize(start, end)` would write, written the same way; then recorded in the registry.

    Raises UnsupportedView (before writing anything) when a view needs Feast's general path.
    """
    plans = plan_views(store)
    client = redis_client(store)
    results: dict[str, ViewResult] = {}
    try:
        for plan in plans:
            results[plan.name] = write_view(store, client, plan, start, end, totals.get(plan.name, 0), progress)
    finally:
        client.close()
    for plan in plans:
        store.registry.apply_materialization(plan.view, store.project, start, end)
    return results
