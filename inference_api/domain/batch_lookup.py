"""score:batch's read of Feast's Redis layout without Lua: two pipelined round trips of HMGETs, column-wise.

The lookup script (`RedisFeatureSource.columns`) derives the entity keys on the server, but Redis spends about 3 us
of Lua around each `redis.call`, 70 % of the script's time (bench/batch_redis.py). Here the batch's own connection
sends every transaction's HMGET in one pipelined write, then one HMGET per unique entity key of those transactions
(a merchant or card several transactions share is read once) in a second one; Redis runs plain commands, and other
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
from dataclasses import dataclass
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
    decode_numbers,
    decode_stamps,
    key_groups,
)
from pipelines.features.catalog import TRANSACTION_VIEW
from pipelines.online_layout import decode_ts, decode_value, feature_field, key_prefix, ts_field

_U32 = struct.Struct("<I").pack
_COMMAND = b"%s$%d\r\n%s%s%s%s\r\n%s"  # an HMGET: its header, the key's length, the key (four parts), the fields
_ENTITY = b"%s$%d\r\n%s%s\x00\x00\x00%s%s\r\n%s"  # the same, the value's length one byte (u32 LE: three zeros)
_PAD = bytes(32)  # numpy's read windows past the last cell stay inside the buffer
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


class _Cells:
    """Every cell of the batch's HMGET replies (None: a missing field) in one buffer, with each cell's offset and
    length: each kind of value is then decoded for the whole batch in one numpy pass."""

    def __init__(self, cells: list[bytes | None]) -> None:
        self.cells = cells
        self.lengths = np.fromiter(map(length_hint, cells), dtype=np.int64, count=len(cells))  # None: 0
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.buf = np.frombuffer(b"".join(filter(None, cells)) + _PAD, dtype=np.uint8)

    def numbers(self, at: np.ndarray) -> np.ndarray:
        """The cells at `at` as float64 (NaN: missing or null), as `decode_value` reads them."""
        values, odd = decode_numbers(self.buf, self.starts[at], self.lengths[at])
        for i in np.flatnonzero(odd):  # a kind of value the vectorised reader does not know: Feast's decoder
            value = decode_value(self.cells[at[i]])
            values[i] = np.nan if value is None else float(value)
        return values

    def stamps(self, at: np.ndarray) -> np.ndarray:
        """The Timestamp cells at `at` as epoch seconds (NaN: none), as `decode_ts` reads them."""
        values, odd = decode_stamps(self.buf, self.starts[at], self.lengths[at])
        for i in np.flatnonzero(odd):
            stamp = decode_ts(self.cells[at[i]])
            values[i] = np.nan if stamp is None else stamp
        return values

    def present(self, at: np.ndarray) -> np.ndarray:
        """Whether the cells at `at` hold a value (not missing, not Feast's explicit null)."""
        start, size = self.starts[at], self.lengths[at]
        null = (size == 3) & (self.buf[start[:, None] + _STEPS] == _NULL).all(axis=1)
        found: np.ndarray = (size > 0) & ~null
        return found


def _grid(base: int, rows: int, width: int, positions: Sequence[int]) -> np.ndarray:
    """The flat cell indices of `positions` in `rows` replies of `width` cells from cell `base`: rows x positions."""
    return base + np.arange(rows)[:, None] * width + np.asarray(positions, dtype=np.intp)[None, :]


class BatchLookup:
    """`RedisFeatureSource.columns` without Lua, on connections of its own (redis-py's `Connection`: connect, AUTH,
    TLS, hiredis replies), for a single Redis with Feast's v3 keys (`RedisFeatureSource.columnar`)."""

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

    async def _read(
        self, ids: Sequence[str], layout: _Layout
    ) -> tuple[list[list[bytes | None]], list[tuple[np.ndarray, list[list[bytes | None]]]]]:
        """Both round trips on one kept connection (`KeptConnections`: one retry after a connection error). After
        an error reply or a cancelled read, replies may be left unread: that connection is never reused."""
        return await self._kept.run(lambda connection: self._trips(connection, ids, layout))

    async def _trips(
        self, connection: AbstractConnection, ids: Sequence[str], layout: _Layout
    ) -> tuple[list[list[bytes | None]], list[tuple[np.ndarray, list[list[bytes | None]]]]]:
        project, prefix, head, tail = self.project, self._prefix, layout.head, layout.tail
        fixed = len(prefix) + 4 + len(project)
        commands = [
            _COMMAND % (head, fixed + len(raw), prefix, _U32(len(raw)), raw, project, tail)
            for raw in map(str.encode, ids)
        ]
        transactions = await _pipelined(connection, commands)

        commands, gathers, spans = entity_commands(layout, project, transactions)
        replies = await _pipelined(connection, commands)
        return transactions, [(g, replies[a:b]) for g, (a, b) in zip(gathers, spans, strict=True)]

    async def close(self) -> None:
        await self._kept.close()


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


async def _pipelined(connection: AbstractConnection, commands: list[bytes]) -> list[Any]:
    """Packed commands sent in one write and their replies read (an error reply raised, as redis-py does)."""
    if not commands:
        return []
    await connection.send_packed_command(commands, check_health=False)
    return await _replies(connection, len(commands))


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


def _columns(
    layout: _Layout,
    ids: Sequence[str],
    transactions: list[list[bytes | None]],
    entities: list[tuple[np.ndarray, list[list[bytes | None]]]],
) -> FeatureColumns:
    """`FeatureColumns` from the two reads: every cell decoded in one pass per kind (numbers, timestamps, presence),
    each key's unique entities once, then gathered to the transactions' rows (row -1 of a gather: no entity, NaN)."""
    count, width = len(ids), len(layout.fields)
    cells = _Cells(list(chain(chain.from_iterable(transactions), *(chain.from_iterable(r) for _, r in entities))))
    number_at = [_grid(0, count, width, [layout.fields[f] for f in layout.numeric])]
    stamp_at = []
    base = count * width
    for group, (_, replies) in zip(layout.groups, entities, strict=True):
        number_at.append(_grid(base, len(replies), group.width, list(group.features.values())))
        stamp_at.append(_grid(base, len(replies), group.width, list(group.stamps.values())))
        base += len(replies) * group.width
    numbers_flat = cells.numbers(np.concatenate([a.ravel() for a in number_at]))
    stamps_flat = cells.stamps(np.concatenate([a.ravel() for a in stamp_at])) if stamp_at else np.empty(0)

    numbers: dict[str, np.ndarray] = {}
    stamps: dict[str, np.ndarray] = {}
    taken = number_at[0].size
    values = numbers_flat[:taken].reshape(number_at[0].shape)
    for j, name in enumerate(layout.numeric):
        numbers[f"{TRANSACTION_VIEW}:{name}"] = values[:, j]
    stamps_taken = 0
    for group, (gather, _), at, stamp in zip(layout.groups, entities, number_at[1:], stamp_at, strict=True):
        values = numbers_flat[taken : taken + at.size].reshape(at.shape)
        taken += at.size
        values = np.vstack([values, np.full((1, at.shape[1]), np.nan)])[gather]
        for j, name in enumerate(group.features):
            numbers[name] = values[:, j]
        values = stamps_flat[stamps_taken : stamps_taken + stamp.size].reshape(stamp.shape)
        stamps_taken += stamp.size
        values = np.vstack([values, np.full((1, stamp.shape[1]), np.nan)])[gather]
        for j, view in enumerate(group.stamps):
            stamps[view] = values[:, j]
    keys = ["card_id", *layout.plan.entity_keys]  # every stored transaction has a card
    present = cells.present(_grid(0, count, width, [layout.fields[k] for k in keys]).ravel()).reshape(count, len(keys))
    return FeatureColumns(
        ids=ids,
        found=present[:, 0],
        numbers=numbers,
        stamps=stamps,
        present={key: present[:, j + 1] for j, key in enumerate(layout.plan.entity_keys)},
        text=lambda field, row: decode_value(cells.cells[row * width + layout.fields[field]]),
    )
