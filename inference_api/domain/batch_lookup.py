"""score:batch's read of Feast's Redis layout without Lua: two pipelined round trips of HMGETs, column-wise.

The lookup script (`RedisFeatureSource.columns`) derives the entity keys on the server, but Redis spends about 3 us
of Lua around each `redis.call`, 70 % of the script's time (bench/batch_redis.py). Here the batch's own connection
sends every transaction's HMGET in one pipelined write, then one HMGET per unique entity key of those transactions
(a merchant or card several transactions share is read once) in a second one, sent in two writes (the first half
of the key groups, then the rest: Redis serves the first while the second is made); Redis runs plain commands, and other
clients' commands are served between them. The commands are packed directly in RESP from bytes precomputed per
plan (Feast's v3 key prefix, the hashed field names), without redis-py's per-command machinery, which costs more
than the reads themselves (a redis-py pipeline of 1,000 HMGETs: about 20 ms).

Only the transaction fields the batch needs are read (the card id, the join keys, the numeric inputs). Each table
(the transactions, each key's unique entities) is decoded with numpy for all its cells at once (the decoders of
`redis_source`), and the entity columns are gathered to the transactions' rows by index. A Redis Cluster is not read
here: a transaction's entities sit in other slots, so `score_batch` takes the record path there (redis-py's cluster
pipeline sends each master its share).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import length_hint
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from inference_api.domain.features import FeatureColumns, within_budget
from inference_api.domain.plan import FeaturePlan
from inference_api.domain.redis_source import (
    BATCH_CHUNK,
    BATCH_LOOP_LAG_S,
    KeptConnections,
    RedisFeatureSource,
    key_groups,
)
from pipelines.features.catalog import TRANSACTION_VIEW
from pipelines.online_layout import decode_ts, decode_value, feature_field, key_prefix, ts_field

_U32 = struct.Struct("<I").pack
_COMMAND = b"%s$%d\r\n%s%s%s%s\r\n%s"  # an HMGET: its header, the key's length, the key (four parts), the fields
_ENTITY = b"%s$%d\r\n%s%s\x00\x00\x00%s%s\r\n%s"  # the same, the value's length one byte (u32 LE: three zeros)
_PAD = bytes(160)  # numpy's read windows past the last cell (up to a key of 127 bytes) stay inside the buffer
_NULL = np.frombuffer(b"\x98\x01\x00", dtype=np.uint8)  # Value.null_val = NULL_VALUE: what decode_value gives as None
_STEPS = np.arange(3)


def _bulk(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


@dataclass(frozen=True)
class _Group:
    """One join key's HMGET: every view of the plan keyed by it lives in the same hash (Feast's layout)."""

    prefix: bytes  # Feast's v3 entity key up to the value's length
    head: bytes  # the command's RESP header, up to its key
    tail: bytes  # the hashed field names, in RESP
    position: int  # the join key's position in the transaction read
    width: int
    features: dict[str, int]  # "view:feature" -> position
    stamps: dict[str, int]  # view -> position of its `_ts:view`


@dataclass(frozen=True)
class _Layout:
    plan: FeaturePlan
    fields: dict[str, int]  # transaction field -> position in its read
    numeric: tuple[str, ...]  # the transaction fields wanted as numbers
    head: bytes
    tail: bytes
    groups: tuple[_Group, ...]
    # The second trip's HMGET of a key group for a key of a given length, its key's bytes zeros (`_template`).
    templates: dict[tuple[int, int], tuple[np.ndarray, int]] = field(default_factory=dict)


def _command_parts(fields: Sequence[bytes | str]) -> tuple[bytes, bytes]:
    return b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2), b"".join(map(_bulk, fields))


def layout_of(plan: FeaturePlan, numeric: Sequence[str]) -> _Layout:
    """The batch read of a plan: which transaction fields, and each key group's command and positions."""
    fields = tuple(dict.fromkeys(["card_id", *plan.entity_keys, *numeric]))  # every stored transaction has a card
    position = {f: i for i, f in enumerate(fields)}
    groups = []
    for join_key, views in key_groups(plan.views):
        names: list[bytes | str] = []
        features: dict[str, int] = {}
        stamps: dict[str, int] = {}
        for view in views:
            for feature in view.features:
                features[f"{view.view}:{feature}"] = len(names)
                names.append(feature_field(view.view, feature))
            stamps[view.view] = len(names)
            names.append(ts_field(view.view))
        head, tail = _command_parts(names)
        groups.append(_Group(key_prefix(join_key), head, tail, position[join_key], len(names), features, stamps))
    head, tail = _command_parts([feature_field(TRANSACTION_VIEW, f) for f in fields])
    return _Layout(plan, position, tuple(numeric), head, tail, tuple(groups))


def string_val(raw: bytes) -> bytes | None:
    """A join key's value from its stored ValueProto (string_val: 0x12, varint length, bytes), None when the cell
    holds no non-empty string: the lookup script's `string_val`."""
    if len(raw) < 2 or raw[0] != 0x12:
        return None
    length = shift = 0
    at = 1
    while at < len(raw):
        byte = raw[at]
        length |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            break
        shift += 7
    return raw[at : at + length] if length else None


def entity_commands(
    layout: _Layout, project: bytes, transactions: list[list[bytes | None]]
) -> tuple[list[bytes], list[np.ndarray], list[tuple[int, int]]]:
    """The second trip: one HMGET per unique entity key of the transactions, per key group; for each group, the
    reply each transaction takes (-1: none) and the span of its commands."""
    commands: list[bytes] = []
    gathers: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    for group in layout.groups:
        at = group.position
        column = [t[at] for t in transactions]
        head, tail, prefix = group.head, group.tail, group.prefix
        fixed = len(prefix) + 4 + len(project)
        start = len(commands)
        position: dict[bytes | None, int] = {}  # each unique key's reply (none for a null or a non-string value)
        for cell in dict.fromkeys(column):
            if cell is None:
                continue
            length = len(cell) - 2
            if 0 < length < 0x80 and cell[1] == length and cell[0] == 0x12:  # a short string_val: read in place
                commands.append(_ENTITY % (head, fixed + length, prefix, cell[1:2], cell[2:], project, tail))
            elif (value := string_val(cell)) is not None:
                commands.append(_COMMAND % (head, fixed + len(value), prefix, _U32(len(value)), value, project, tail))
            else:
                continue
            position[cell] = len(position)
        gathers.append(np.fromiter(map(position.get, column, repeat(-1)), dtype=np.intp, count=len(column)))
        spans.append((start, len(commands)))
    return commands, gathers, spans


async def _replies(connection: AbstractConnection, count: int) -> list[Any]:
    """`count` replies, taken from the hiredis reader that redis-py's connection parses with in one loop: redis-py's
    `read_response` spends about as much per reply (a coroutine, a timeout scope, its error handling) as hiredis
    spends parsing it, 1.5 ms of a 256-id batch's 1,000 replies on this machine (bench/README.md). Where the
    connection's parser is not hiredis's (redis-py without hiredis, another version), one `read_response` each."""
    parser = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if not isinstance(parser, _AsyncHiredisParser) or reader is None:
        return [await connection.read_response() for _ in range(count)]
    replies: list[Any] = []
    gets, append = reader.gets, replies.append
    try:
        for _ in range(count):
            reply = gets()
            while reply is _NOT_ENOUGH_DATA:
                await parser.read_from_socket()  # type: ignore[no-untyped-call]  # ConnectionError: closed
                reply = gets()
            if isinstance(reply, ResponseError):
                raise reply
            append(reply)
    except OSError as exc:  # as read_response: the connection is dropped, the error is redis-py's
        await connection.disconnect(nowait=True)
        raise redis.ConnectionError(f"Error while reading from Redis: {exc}") from exc
    except BaseException:  # a cancelled or failed read leaves replies unread: never reuse the connection as it is
        await connection.disconnect(nowait=True)
        raise
    return replies


# ------------------------------------------------------------------------------------------- the replies as arrays
# hiredis parses both trips' replies; their cells are then joined into one buffer and read only as bytes at offsets
# of it. (Reading the raw RESP and locating the cells with numpy instead was built and measured: no faster at 256
# ids, `score_batch-20261202-152516.json`, so the field's own parser stays.)


@dataclass(frozen=True)
class _Table:
    """Cells located in a buffer: cell i is `buf[starts[i] : starts[i] + lengths[i]]`, length 0 for a missing
    field (RESP's nil) or an empty value, which the decoders read alike (no value)."""

    buf: np.ndarray  # uint8, padded: numpy's read windows past the last cell stay inside it
    starts: np.ndarray
    lengths: np.ndarray

    def cell(self, i: int) -> bytes | None:
        size = int(self.lengths[i])
        return None if size == 0 else self.buf[self.starts[i] : self.starts[i] + size].tobytes()


def table_of(replies: list[list[bytes | None]]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Replies parsed by hiredis (lists of cells, None: missing) as a buffer and each cell's offset and length."""
    cells = list(chain.from_iterable(replies))
    lengths = np.fromiter(map(length_hint, cells), dtype=np.int64, count=len(cells))  # None: 0
    return b"".join(filter(None, cells)), np.cumsum(lengths) - lengths, lengths


async def _exchange(connection: AbstractConnection, payload: list[bytes], widths: np.ndarray) -> _Read:
    """One pipelined trip: `payload` (packed HMGETs, one reply of `widths[i]` cells each) in one write, the replies
    parsed by hiredis (`_replies`: an error reply raised) and laid out as one buffer (`table_of`)."""
    await connection.send_packed_command(payload, check_health=False)
    data, starts, lengths = table_of(await _replies(connection, len(widths)))
    return _Read(data, starts, lengths)


@dataclass(frozen=True)
class _Read:
    """One trip's replies: cell i is `data[starts[i] : starts[i] + lengths[i]]` (length 0: none)."""

    data: bytes
    starts: np.ndarray
    lengths: np.ndarray


# ------------------------------------------------------------------------------------------ the values, column-wise
# Feast's ValueProto and Timestamp bytes decoded for whole columns at once, each kind at its offsets with numpy
# (tests/unit/test_batch_lookup.py holds every kind equal to `decode_value` / `decode_ts`); a cell of a kind not
# read here is left to those decoders. Varints are read by their length in the cell, a few lengths per batch (a
# count is one byte, a time in milliseconds six), each with a window of exactly that many bytes.
_VARINT_TAGS = np.zeros(256, dtype=bool)
_VARINT_TAGS[[0x18, 0x20, 0x38, 0x40]] = True  # int32_val = 3, int64_val = 4, bool_val = 7, unix_timestamp_val = 8
_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)
_EIGHT = np.arange(1, 9)
_FOUR = np.arange(1, 5)
_TEN = np.arange(10)


def _fixed_varints(buf: np.ndarray, at: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Varints of exactly `width` bytes at `at`: their values (int64: a ten-byte one is two's complement) and which
    of them are whole varints of that width."""
    raw = buf[at[:, None] + _TEN[:width]]
    whole = raw[:, -1] < 0x80
    if width > 1:
        whole &= (raw[:, :-1] >= 0x80).all(axis=1)
    if width == 1:
        return raw[:, 0].astype(np.int64), whole
    groups = (raw & np.uint8(0x7F)).astype(np.uint64) << _SHIFTS[:width]
    return np.bitwise_or.reduce(groups, axis=1).view(np.int64), whole


def numbers(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ValueProto cells as float64 (NaN: empty, missing or Feast's null) and a mask of the cells not decoded here."""
    out = np.full(len(starts), np.nan)
    tag = buf[starts]
    double = (tag == 0x29) & (lengths == 9)  # double_val = 5, fixed64
    if double.any():
        out[double] = buf[starts[double, None] + _EIGHT].view("<f8")[:, 0]
    single = (tag == 0x35) & (lengths == 5)  # float_val = 6, fixed32
    if single.any():
        out[single] = buf[starts[single, None] + _FOUR].view("<f4")[:, 0]
    varint = _VARINT_TAGS[tag] & (lengths >= 2) & (lengths <= 11)
    if varint.any():
        for size in np.unique(lengths[varint]).tolist():
            at = np.flatnonzero(varint & (lengths == size))
            values, whole = _fixed_varints(buf, starts[at] + 1, size - 1)
            out[at[whole]] = values[whole]
            varint[at[~whole]] = False
    null = (lengths == 3) & (tag == 0x98) & (buf[starts + 1] == 0x01) & (buf[starts + 2] == 0)  # null_val = 19
    return out, (lengths > 0) & ~(double | single | varint | null)


def stamps(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Timestamp cells (seconds = 1, nanos = 2, each a varint omitted when 0) as epoch seconds (NaN: none, or not
    after the epoch, as `decode_ts`) and a mask of the cells not decoded here."""
    seconds = np.zeros(len(starts), dtype=np.int64)
    nanos = np.zeros(len(starts), dtype=np.int64)
    position = starts.copy()
    end = starts + lengths
    filled = lengths > 0
    for tag, into in ((0x08, seconds), (0x10, nanos)):
        here = np.flatnonzero(filled & (position < end) & (buf[position] == tag))
        if len(here):
            raw = buf[position[here, None] + 1 + _TEN]
            size = np.argmin(raw >= 0x80, axis=1) + 1  # up to the first byte without the continuation bit
            groups = np.where(size[:, None] > _TEN, (raw & np.uint8(0x7F)).astype(np.uint64) << _SHIFTS, 0)
            into[here] = np.bitwise_or.reduce(groups, axis=1).view(np.int64)
            position[here] += size + 1
    value = seconds.astype(np.float64) + nanos / 1e9
    return np.where(filled & (value > 0), value, np.nan), filled & (position != end)


def _grid(base: int, rows: int, width: int, positions: Sequence[int]) -> np.ndarray:
    """The flat cell indices of `positions` in `rows` replies of `width` cells from cell `base`: rows x positions."""
    return base + np.arange(rows)[:, None] * width + np.asarray(positions, dtype=np.intp)[None, :]


class BatchLookup:
    """`RedisFeatureSource.columns` without Lua, on connections of its own (redis-py's `Connection`: connect, AUTH,
    TLS), for a single Redis with Feast's v3 keys (`RedisFeatureSource.columnar`)."""

    def __init__(self, source: RedisFeatureSource) -> None:
        client = source.client
        if not source.columnar or not isinstance(client, aioredis.Redis):
            raise ValueError("the batch lookup needs a single Redis and Feast's v3 entity keys (see columnar)")
        pool = client.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": None}  # within_budget bounds a read
        self._kept = KeptConnections(lambda: pool.connection_class(**kwargs))
        self.project = source.project
        self.budget_s = source.budget_s
        self._prefix = key_prefix(source.join_key)
        self._layouts: dict[tuple[int, tuple[str, ...]], _Layout] = {}

    def _layout(self, plan: FeaturePlan, numeric: Sequence[str]) -> _Layout:
        cache_key = (id(plan), tuple(numeric))
        layout = self._layouts.get(cache_key)
        if layout is None or layout.plan is not plan:
            if len(self._layouts) > 32:  # plans of versions no longer served
                self._layouts.clear()
            layout = self._layouts[cache_key] = layout_of(plan, numeric)
        return layout

    async def columns(self, ids: Sequence[str], plan: FeaturePlan, numeric: Sequence[str] = ()) -> FeatureColumns:
        """The transactions of `ids` and their plan's entity features, column-wise, as `RedisFeatureSource.columns`
        gives them. The read's budget is the request budget per BATCH_CHUNK ids, plus up to BATCH_LOOP_LAG_S of
        an event loop busy with other batches; a store that fails or does not answer: `RedisUnavailable`."""
        layout = self._layout(plan, numeric)
        budget = self.budget_s * max(1, math.ceil(len(ids) / BATCH_CHUNK))
        transactions, entities = await within_budget(self._read(ids, layout), budget, BATCH_LOOP_LAG_S)
        return _columns(layout, ids, transactions, entities)

    async def _read(self, ids: Sequence[str], layout: _Layout) -> tuple[_Read, _Entities]:
        """Both round trips on one kept connection (`KeptConnections`: one retry after a connection error). After
        an error reply or a cancelled read, replies may be left unread: that connection is never reused."""
        return await self._kept.run(lambda connection: self._trips(connection, ids, layout))

    async def _trips(
        self, connection: AbstractConnection, ids: Sequence[str], layout: _Layout
    ) -> tuple[_Read, _Entities]:
        commands = transaction_commands(layout, self._prefix, self.project, ids)
        transactions = await _exchange(connection, commands, np.full(len(ids), len(layout.fields)))
        parts: list[_EntityCommands] = []
        try:  # the second trip in two writes: Redis reads the first key groups while the others are made
            for chosen in _halves(len(layout.groups)):
                parts.append(entity_reads(layout, self.project, transactions, len(ids), chosen))
                if parts[-1].commands:
                    await connection.send_packed_command(parts[-1].commands, check_health=False)
        except BaseException:  # commands sent, their replies unread: never reuse the connection as it is
            await connection.disconnect(nowait=True)
            raise
        widths = np.concatenate([part.widths for part in parts]) if parts else np.empty(0, dtype=np.int64)
        gathers = [gather for part in parts for gather in part.gathers]
        counts = [n for part in parts for n in part.counts]
        if not len(widths):
            return transactions, _Entities(gathers, counts, None)
        data, starts, lengths = table_of(await _replies(connection, len(widths)))
        return transactions, _Entities(gathers, counts, _Read(data, starts, lengths))

    async def close(self) -> None:
        await self._kept.close()


def transaction_commands(layout: _Layout, prefix: bytes, project: bytes, ids: Sequence[str]) -> list[bytes]:
    """The first trip: each transaction's HMGET. Ids of one length in bytes (as a batch of one system's ids nearly
    always is) are written into rows of one template with numpy; otherwise one command each."""
    size = len(ids[0]) if ids else 0
    if size and len(set(map(len, ids))) == 1:
        raw = "".join(ids).encode()
        if len(raw) == size * len(ids):  # every character one byte: each id's bytes are its slice
            template, at = _template(layout, -1, project, size, prefix)
            block = np.broadcast_to(template, (len(ids), len(template))).copy()
            block[:, at : at + size] = np.frombuffer(raw, dtype=np.uint8).reshape(len(ids), size)
            return [block.tobytes()]
    fixed = len(prefix) + 4 + len(project)
    head, tail = layout.head, layout.tail
    return [
        _COMMAND % (head, fixed + len(raw), prefix, _U32(len(raw)), raw, project, tail) for raw in map(str.encode, ids)
    ]


@dataclass(frozen=True)
class _Entities:
    """The second trip: per key group, the reply each transaction takes (-1: none) and its count of replies."""

    gathers: list[np.ndarray]
    counts: list[int]
    read: _Read | None  # None: no entity to read


@dataclass(frozen=True)
class _EntityCommands:
    commands: list[bytes]
    widths: np.ndarray  # cells of each reply
    gathers: list[np.ndarray]
    counts: list[int]


def entity_reads(
    layout: _Layout, project: bytes, transactions: _Read, count: int, chosen: range | None = None
) -> _EntityCommands:
    """The second trip's commands built from the transactions' cells without a Python object per cell: the join key
    cells of every key group that hold a short string_val (0x12, a one-byte length, 1 to 127 bytes: every key this
    project writes) are made unique with numpy in one pass (each key as its group, its length and its bytes), and
    their HMGETs written as rows of a template per group and key length. A key cell of another form (a longer
    string, broken bytes) sends the batch through `entity_commands`, the same commands. `chosen`: the key groups
    (consecutive, default every one) whose commands, gathers and counts are made, in group order."""
    chosen = range(len(layout.groups)) if chosen is None else chosen
    groups = layout.groups[chosen.start : chosen.stop]
    if not groups:
        return _EntityCommands([], np.empty(0, dtype=np.int64), [], [])
    buf = np.frombuffer(transactions.data + _PAD, dtype=np.uint8)
    cells = (np.arange(count)[None, :] * len(layout.fields) + np.array([g.position for g in groups])[:, None]).ravel()
    start, size = transactions.starts[cells], transactions.lengths[cells]
    tag = buf[start]
    tag[size < 2] = 0
    length = buf[start + 1]
    short = (tag == 0x12) & (size == length + 2) & (length > 0) & (length < 0x80)
    if ((tag == 0x12) & ~short & (size > 2)).any():  # a longer string (or broken bytes): the Python path
        return _entity_commands_of(layout, project, transactions, count, chosen)
    rows = np.flatnonzero(short)
    gathers = [np.full(count, -1, dtype=np.intp) for _ in groups]
    if not len(rows):
        return _EntityCommands([], np.empty(0, dtype=np.int64), gathers, [0] * len(groups))
    width = int(length[rows].max()) + 2
    keys = buf[start[rows, None] + _KEY[:width]]  # the tag, the length byte, then the value and what follows
    keys[_KEY[:width] > length[rows, None] + 1] = 0  # what follows a key is not part of it
    group = rows // count
    keys[:, 0] = group  # (the tag is the same for every key): each key as its group, its length, its bytes
    packed = np.ascontiguousarray(keys).view(np.dtype((np.void, width)))[:, 0]
    _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
    unique_keys = keys[first]
    inverse = inverse.ravel()
    classes = unique_keys[:, 0].astype(np.int64) * 256 + unique_keys[:, 1]  # the commands by group, then length
    if (np.diff(classes) < 0).any():
        order = np.argsort(classes, kind="stable")
        rank = np.empty(len(order), dtype=np.intp)
        rank[order] = np.arange(len(order))
        unique_keys, classes, inverse = unique_keys[order], classes[order], rank[inverse]
    counts = np.bincount(unique_keys[:, 0], minlength=len(groups))
    base = np.cumsum(counts) - counts
    for g in range(len(groups)):
        mine = group == g
        gathers[g][rows[mine] % count] = inverse[mine] - base[g]
    commands: list[bytes] = []
    bounds = np.flatnonzero(np.diff(classes)) + 1
    for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), len(classes)], strict=True):
        g, value_size = divmod(int(classes[a]), 256)
        template, at = _template(layout, chosen.start + g, project, value_size)
        block = np.broadcast_to(template, (b - a, len(template))).copy()
        block[:, at : at + value_size] = unique_keys[a:b, 2 : 2 + value_size]
        commands.append(block.tobytes())
    widths = np.repeat([g.width for g in groups], counts)
    return _EntityCommands(commands, widths, gathers, counts.tolist())


_KEY = np.arange(129)


def _halves(groups: int) -> list[range]:
    """The key groups in two runs (one when there is one group): the second trip is sent in two writes, so Redis
    serves the first run's HMGETs while the second run's are made (bench/README.md, issue 20's sixth session)."""
    middle = (groups + 1) // 2
    return [range(0, middle), range(middle, groups)] if groups > 1 else [range(groups)]


def _template(layout: _Layout, group: int, project: bytes, size: int, prefix: bytes = b"") -> tuple[np.ndarray, int]:
    """An HMGET of key group `group` (-1: the transaction's, under `prefix`) for a key value of `size` bytes (its
    bytes zeros) and where the value starts: made once per layout, group and size."""
    found = layout.templates.get((group, size))
    if found is None:
        head, tail = (layout.head, layout.tail) if group < 0 else (layout.groups[group].head, layout.groups[group].tail)
        prefix = prefix if group < 0 else layout.groups[group].prefix
        before = b"%s$%d\r\n%s%s" % (head, len(prefix) + 4 + size + len(project), prefix, _U32(size))
        raw = before + bytes(size) + project + b"\r\n" + tail
        found = layout.templates[(group, size)] = (np.frombuffer(raw, dtype=np.uint8), len(before))
    return found


def _entity_commands_of(
    layout: _Layout, project: bytes, transactions: _Read, count: int, chosen: range
) -> _EntityCommands:
    """`entity_commands` over the transactions' cells as Python bytes (the `chosen` key groups' part of them)."""
    table = _Table(np.frombuffer(transactions.data + _PAD, dtype=np.uint8), transactions.starts, transactions.lengths)
    width = len(layout.fields)
    rows = [[table.cell(r * width + f) for f in range(width)] for r in range(count)]
    commands, gathers, spans = entity_commands(layout, project, rows)
    spans = spans[chosen.start : chosen.stop]
    counts = [b - a for a, b in spans]
    commands = commands[spans[0][0] : spans[-1][1]]
    groups = layout.groups[chosen.start : chosen.stop]
    widths = np.repeat([g.width for g in groups], counts) if commands else np.empty(0, dtype=np.int64)
    return _EntityCommands(commands, widths, gathers[chosen.start : chosen.stop], counts)


def _columns(layout: _Layout, ids: Sequence[str], transactions: _Read, entities: _Entities) -> FeatureColumns:
    """`FeatureColumns` from the two reads: every cell decoded in one pass per kind (numbers, timestamps, presence),
    each key's unique entities once, then gathered to the transactions' rows (row -1 of a gather: no entity, NaN)."""
    count, width = len(ids), len(layout.fields)
    read = entities.read
    if read is None:
        table = _Table(np.frombuffer(transactions.data + _PAD, dtype=np.uint8), transactions.starts,
                       transactions.lengths)  # fmt: skip
    else:
        table = _Table(
            np.frombuffer(transactions.data + read.data + _PAD, dtype=np.uint8),
            np.concatenate([transactions.starts, read.starts + len(transactions.data)]),
            np.concatenate([transactions.lengths, read.lengths]),
        )
    number_at = [_grid(0, count, width, [layout.fields[f] for f in layout.numeric])]
    stamp_at = []
    base = count * width
    for group, replies in zip(layout.groups, entities.counts, strict=True):
        number_at.append(_grid(base, replies, group.width, list(group.features.values())))
        stamp_at.append(_grid(base, replies, group.width, list(group.stamps.values())))
        base += replies * group.width
    numbers_flat = _numbers_at(table, np.concatenate([a.ravel() for a in number_at]))
    stamps_flat = _stamps_at(table, np.concatenate([a.ravel() for a in stamp_at])) if stamp_at else np.empty(0)

    numbers: dict[str, np.ndarray] = {}
    stamps_of: dict[str, np.ndarray] = {}
    taken = number_at[0].size
    values = numbers_flat[:taken].reshape(number_at[0].shape)
    for j, name in enumerate(layout.numeric):
        numbers[f"{TRANSACTION_VIEW}:{name}"] = values[:, j]
    stamps_taken = 0
    for group, gather, at, stamp in zip(layout.groups, entities.gathers, number_at[1:], stamp_at, strict=True):
        values = numbers_flat[taken : taken + at.size].reshape(at.shape)
        taken += at.size
        values = np.vstack([values, np.full((1, at.shape[1]), np.nan)])[gather]
        for j, name in enumerate(group.features):
            numbers[name] = values[:, j]
        values = stamps_flat[stamps_taken : stamps_taken + stamp.size].reshape(stamp.shape)
        stamps_taken += stamp.size
        values = np.vstack([values, np.full((1, stamp.shape[1]), np.nan)])[gather]
        for j, view in enumerate(group.stamps):
            stamps_of[view] = values[:, j]
    keys = ["card_id", *layout.plan.entity_keys]  # every stored transaction has a card
    present = _present(table, _grid(0, count, width, [layout.fields[k] for k in keys]).ravel()).reshape(
        count, len(keys)
    )
    return FeatureColumns(
        ids=ids,
        found=present[:, 0],
        numbers=numbers,
        stamps=stamps_of,
        present={key: present[:, j + 1] for j, key in enumerate(layout.plan.entity_keys)},
        text=lambda field, row: decode_value(table.cell(row * width + layout.fields[field])),
    )


def _numbers_at(table: _Table, at: np.ndarray) -> np.ndarray:
    """The cells at `at` as float64 (NaN: missing or null), as `decode_value` reads them."""
    values, odd = numbers(table.buf, table.starts[at], table.lengths[at])
    for i in np.flatnonzero(odd):  # a kind of value the vectorised reader does not know: Feast's decoder
        value = decode_value(table.cell(int(at[i])))
        values[i] = np.nan if value is None else float(value)
    return values


def _stamps_at(table: _Table, at: np.ndarray) -> np.ndarray:
    """The Timestamp cells at `at` as epoch seconds (NaN: none), as `decode_ts` reads them."""
    values, odd = stamps(table.buf, table.starts[at], table.lengths[at])
    for i in np.flatnonzero(odd):
        stamp = decode_ts(table.cell(int(at[i])))
        values[i] = np.nan if stamp is None else stamp
    return values


def _present(table: _Table, at: np.ndarray) -> np.ndarray:
    """Whether the cells at `at` hold a value (not missing, not Feast's explicit null)."""
    start, size = table.starts[at], table.lengths[at]
    null = (size == 3) & (table.buf[start[:, None] + _STEPS] == _NULL).all(axis=1)
    found: np.ndarray = (size > 0) & ~null
    return found
