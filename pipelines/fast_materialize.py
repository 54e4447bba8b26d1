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
the pause other clients see to about a millisecond per call (500 rows).

On a Redis Cluster (`redis_type: redis_cluster`) a script's keys must share one hash slot, so each batch's rows are
ordered by (master, slot) (the slot: CRC16 of the key mod 16384, computed for whole columns; Feast's keys carry no
hash tag, and any key with a `{` goes through redis-py's `key_slot` to be exact), the calls are cut at slot
boundaries as well as every `rows_per_command` rows, and each master gets its calls on a connection and a writer
thread of its own, from the slot map read once at the start. Calls hold a few keys each there (a 100,000-row batch
spreads over 16,384 slots), so they are EVALSHA of the script loaded on every master beforehand. The single-node path
sends exactly what it always did. A MOVED, ASK or TRYAGAIN reply means the slot map changed while writing
(resharding or failover): the run stops with `SlotMapChanged`, which says to rerun once the resharding has finished
(or to use `--engine feast`) rather than fall back silently; the rows written until then are correct (the script's
rule), and a rerun completes the rest. A sentinel deployment is still left to Feast's engine.

Then the materialized interval is recorded in Feast's registry (`registry.apply_materialization`), as
`FeatureStore.materialize` does, so `feast` sees the views as materialized.
"""

from __future__ import annotations

import hashlib
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

from core.errors import FraudserveError
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


class SlotMapChanged(FraudserveError):
    """A cluster master answered MOVED, ASK or TRYAGAIN: its slots moved since the slot map was read."""

    code = "slot_map_changed"
    status = 503


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


def plan_view(store: FeatureStore, original: FeatureView) -> ViewPlan:
    """What the fast path needs of one view `store.materialize` would write, or UnsupportedView when it needs Feast's
    general path. A window view is read from the file the backfill computed (`offline_view`)."""
    from feast.feature_view import FeatureView
    from feast.infra.offline_stores.file_source import FileSource
    from feast.value_type import ValueType

    from pipelines.offline.store import offline_view

    view = offline_view(store, original)
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
    return ViewPlan(original, view.name, keys[0].name, Path(str(source.path)), source.timestamp_field, tuple(features))


def views_to_materialize(store: FeatureStore) -> list[FeatureView]:
    """The views `store.materialize` would write."""
    if store.config.registry.enable_online_feature_view_versioning:
        raise UnsupportedView("versioned online feature views")
    from feast.feature_view import FeatureView

    return [v for v in store._get_feature_views_to_materialize(None) if isinstance(v, FeatureView)]


def plan_views(store: FeatureStore) -> list[ViewPlan]:
    """Every view `store.materialize` would write, or UnsupportedView when one needs Feast's general path."""
    return [plan_view(store, view) for view in views_to_materialize(store)]


def latest_rows(
    con: duckdb.DuckDBPyConnection, plan: ViewPlan, start: datetime, end: datetime, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Each entity's latest row with event time in [start, end]: join key, epoch microseconds, the features.

    When no key repeats in the span (the transaction view: one row per transaction) the rows stream straight from
    the scan; otherwise a window keeps the latest per key, which DuckDB must finish before the first row comes out.
    """
    # Any Parquet timestamp (s to ns, naive taken as UTC, any zone) as Feast reads it: a UTC instant, in microseconds.
    ts = f"{_quote(plan.timestamp_field)}::TIMESTAMPTZ"
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


CLUSTER_SLOTS = 16384


@lru_cache(maxsize=1)
def _crc16_table() -> np.ndarray:
    """CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), Redis Cluster's key hash, one entry per byte value."""
    table = np.zeros(256, dtype=np.uint16)
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table[byte] = crc & 0xFFFF
    return table


def key_slots(keys: pa.Array) -> np.ndarray:
    """Each key's Redis Cluster hash slot (`redis.crc.key_slot`), a byte position of every key at a time."""
    from redis.crc import key_slot

    data, offsets = _flat(keys)
    raw = np.frombuffer(data, dtype=np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets).astype(np.int64)
    table = _crc16_table()
    crc = np.zeros(len(keys), dtype=np.uint16)
    braces = np.zeros(len(keys), dtype=bool)
    for position in range(int(lengths.max()) if len(keys) else 0):
        live = lengths > position
        byte = raw[np.where(live, starts + position, 0)] if len(raw) else np.zeros(len(keys), dtype=np.uint8)
        braces |= live & (byte == ord("{"))
        step = (crc << np.uint16(8)) ^ table[((crc >> np.uint16(8)) ^ byte) & 0xFF]
        crc = np.where(live, step, crc)
    slots = (crc % CLUSTER_SLOTS).astype(np.int32)
    for i in np.flatnonzero(braces):  # a hash tag may apply: redis-py's rule, key by key
        slots[i] = key_slot(bytes(data[offsets[i] : offsets[i + 1]]))
    return slots


class CommandEncoder:
    """RESP of the write-if-newer script calls for batches of one view's rows.

    `encode` cuts a batch every `rows_per_command` rows (one Redis node); `encode_for_cluster` orders it by slot and
    returns each master's calls, cut at slot boundaries too. Both assemble the calls in `_calls`.
    """

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
        self.source = write_if_newer_script(len(plan.features)).encode()
        self.script = _bulk(b"EVAL") + _bulk(self.source)
        self.sha = hashlib.sha1(self.source).hexdigest().encode()  # Redis names scripts by SHA-1
        self.script_by_sha = _bulk(b"EVALSHA") + _bulk(self.sha)

    def _columns(self, batch: pa.RecordBatch) -> tuple[pa.Array, pa.Array]:
        """The batch's entity keys (raw bytes) and each row's packed script argument."""
        keys = entity_keys(self.project, self.plan.join_key, batch.column("__key"))
        timestamps = encode_timestamps(batch.column("__ts_us").to_numpy(zero_copy_only=False))
        columns = [timestamps, *(encode_values(batch.column(name), dtype) for name, dtype in self.plan.features)]
        args = pc.binary_join_element_wise(*(piece for c in columns for piece in _packed(c)), pa.scalar(b""))
        return keys, args

    def _calls(self, keys: pa.Array, args: pa.Array, cuts: Iterator[tuple[int, int]], script: bytes) -> Commands:
        """One script call per [low, high) row range of `cuts`, keys as RESP bulk strings."""
        key_data, key_offsets = _flat(_resp_bulk(keys))
        arg_data, arg_offsets = _flat(args)
        parts: list[bytes | memoryview] = []
        count = 0
        for low, high in cuts:
            n = high - low
            packed = int(arg_offsets[high] - arg_offsets[low])
            parts.append(b"*%d\r\n" % (3 + n + self.fixed_count + 1))
            parts.append(script)
            parts.append(_bulk(b"%d" % n))
            parts.append(key_data[key_offsets[low] : key_offsets[high]])
            parts.append(self.fixed)
            parts.append(b"$%d\r\n" % packed)
            parts.append(arg_data[arg_offsets[low] : arg_offsets[high]])
            parts.append(b"\r\n")
            count += 1
        return Commands(b"".join(parts), count, len(keys))

    def encode(self, batch: pa.RecordBatch) -> Commands:
        """EVAL calls of `rows_per_command` rows each, in the batch's order (a single Redis node)."""
        rows = batch.num_rows
        keys, args = self._columns(batch)
        step = self.rows_per_command
        return self._calls(keys, args, ((low, min(rows, low + step)) for low in range(0, rows, step)), self.script)

    def encode_for_cluster(self, batch: pa.RecordBatch, owners: np.ndarray, masters: int) -> list[Commands]:
        """Each master's EVALSHA calls (index: position in the slot map's masters), every call within one slot.

        `owners[slot]` is the index of the master that serves the slot.
        """
        keys, args = self._columns(batch)
        slots = key_slots(keys)
        nodes = owners[slots].astype(np.int64)
        order = np.argsort(nodes * CLUSTER_SLOTS + slots, kind="stable")
        keys, args = keys.take(pa.array(order)), args.take(pa.array(order))
        slots, nodes = slots[order], nodes[order]
        # A call starts where the slot changes and every rows_per_command rows within a slot's run.
        run_starts = np.flatnonzero(np.diff(slots, prepend=-1))
        run_of_row = np.repeat(run_starts, np.diff(np.append(run_starts, len(slots))))
        starts = np.flatnonzero((np.arange(len(slots)) - run_of_row) % self.rows_per_command == 0)
        bounds = np.append(starts, len(slots)).tolist()
        node_bounds = np.searchsorted(nodes, np.arange(masters + 1)).tolist()
        by_node: list[Commands] = []
        for node in range(masters):
            low, high = node_bounds[node], node_bounds[node + 1]
            first = int(np.searchsorted(starts, low))
            last = int(np.searchsorted(starts, high))
            cuts = ((bounds[i] - low, bounds[i + 1] - low) for i in range(first, last))
            by_node.append(
                self._calls(keys.slice(low, high - low), args.slice(low, high - low), cuts, self.script_by_sha)
            )
        return by_node


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
            raise _clear(self.error) from self.error
        self.queue.put(commands)

    def close(self) -> int:
        """Wait for everything queued; the number of keys written (newer than what Redis held)."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise _clear(self.error) from self.error
        return self.written


def _clear(error: BaseException) -> BaseException:
    """A cluster's MOVED / ASK / TRYAGAIN as SlotMapChanged, saying what to do; any other error as it is."""
    from redis.exceptions import AskError, MovedError, TryAgainError

    if isinstance(error, MovedError | AskError | TryAgainError):
        return SlotMapChanged(
            f"a Redis Cluster master answered {type(error).__name__} ({error}): slots are moving (resharding or "
            "failover) since the fast engine read the slot map. Rerun the materialize once the resharding has "
            "finished (rows already written are correct, a rerun writes the rest), or use `--engine feast`."
        )
    return error


@dataclass
class OnlineTarget:
    """Where the fast path writes: one Redis node, or each master of a cluster with the slot map."""

    masters: list[redis.Redis]  # one client per node (one for a single Redis)
    owners: np.ndarray | None = None  # cluster: slot -> index into masters; None: a single Redis node

    @property
    def cluster(self) -> bool:
        return self.owners is not None

    def close(self) -> None:
        for client in self.masters:
            client.close()


def _cluster_target(nodes: list[dict[str, Any]], params: dict[str, Any]) -> OnlineTarget:
    """Every master of the cluster and which one serves each slot, from redis-py's slot map."""
    import redis
    from redis.cluster import ClusterNode

    startup = [ClusterNode(n["host"], int(n["port"])) for n in nodes]  # type: ignore[no-untyped-call]
    cluster = redis.RedisCluster(startup_nodes=startup, **params)
    try:
        slots_cache: dict[int, list[Any]] = cluster.nodes_manager.slots_cache
        if len(slots_cache) != CLUSTER_SLOTS:
            raise SlotMapChanged(f"the cluster serves {len(slots_cache)} of {CLUSTER_SLOTS} slots: not all are up")
        addresses: list[tuple[str, int]] = []
        owners = np.empty(CLUSTER_SLOTS, dtype=np.int32)
        for slot, holders in slots_cache.items():
            address = (str(holders[0].host), int(holders[0].port))  # the primary comes first
            if address not in addresses:
                addresses.append(address)
            owners[slot] = addresses.index(address)
    finally:
        cluster.close()
    masters = [redis.Redis(host=host, port=port, **params) for host, port in addresses]
    return OnlineTarget(masters, owners)


def online_target(store: FeatureStore) -> OnlineTarget:
    """Clients for the store's online store (a single node or a cluster's masters), from Feast's connection string."""
    import redis
    from feast.infra.online_stores.redis import RedisOnlineStore

    config: Any = store.config.online_store
    kind = str(getattr(getattr(config, "redis_type", None), "value", ""))
    if getattr(config, "type", None) != "redis" or kind not in ("redis", "redis_cluster"):
        raise UnsupportedView("the fast path writes to a single Redis node or a Redis Cluster, not a sentinel")
    nodes, params = RedisOnlineStore._parse_connection_string(config.connection_string)
    if kind == "redis_cluster":
        return _cluster_target(nodes, params)
    return OnlineTarget([redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)])


def write_view(
    store: FeatureStore,
    target: OnlineTarget | redis.Redis,
    plan: ViewPlan,
    start: datetime,
    end: datetime,
    total: int,
    progress: Progress | None = None,
    batch_rows: int = 100_000,
    rows_per_command: int = 500,
) -> ViewResult:
    """Write one view's latest rows in [start, end] into Redis with the write-if-newer script.

    On a cluster each master has its own writer (connection and thread); the script is loaded on every master first.
    """
    if not isinstance(target, OnlineTarget):
        target = OnlineTarget([target])
    config: Any = store.config.online_store
    encoder = CommandEncoder(plan, store.project, config.key_ttl_seconds, rows_per_command)
    if target.cluster:
        for client in target.masters:
            client.script_load(encoder.source.decode())
    writers = [PipelinedWriter(client) for client in target.masters]
    done = 0
    lock = threading.Lock()

    def sent(rows: int) -> None:
        nonlocal done
        with lock:
            done += rows
            if progress is not None:
                progress(plan.name, done, total)

    for writer in writers:
        writer.on_done = sent
    rows = 0
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for batch in latest_rows(con, plan, start, end, batch_rows):
            if not batch.num_rows:
                continue
            rows += batch.num_rows
            if target.owners is None:
                writers[0].put(encoder.encode(batch))
                continue
            for writer, commands in zip(
                writers, encoder.encode_for_cluster(batch, target.owners, len(writers)), strict=True
            ):
                if commands.count:
                    writer.put(commands)
    finally:
        con.close()
        errors: list[BaseException] = []
        written = 0
        for writer in writers:
            try:
                written += writer.close()
            except BaseException as exc:  # every writer is joined before the first error is raised
                errors.append(exc)
        if errors:
            raise errors[0]
    return ViewResult(rows, written)


def fast_materialize(
    store: FeatureStore,
    start: datetime,
    end: datetime,
    totals: dict[str, int],
    progress: Progress | None = None,
    plans: list[ViewPlan] | None = None,
    spans: dict[str, tuple[datetime, datetime]] | None = None,
) -> dict[str, ViewResult]:
    """Every view `store.materialize(start, end)` would write (or `plans`), written the same way; then recorded in
    the registry. `spans` gives a view its own interval instead of [start, end] (a batch view: its source's span).

    Raises UnsupportedView (before writing anything) when a view needs Feast's general path, SlotMapChanged when a
    cluster's slots move while writing.
    """
    plans = plan_views(store) if plans is None else plans
    spans = spans or {}
    target = online_target(store)
    results: dict[str, ViewResult] = {}
    try:
        for plan in plans:
            low, high = spans.get(plan.name, (start, end))
            results[plan.name] = write_view(store, target, plan, low, high, totals.get(plan.name, 0), progress)
    finally:
        target.close()
    for plan in plans:
        low, high = spans.get(plan.name, (start, end))
        store.registry.apply_materialization(plan.view, store.project, low, high)
    return results
