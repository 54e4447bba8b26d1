"""Chunked writers: each chunk is appended to Parquet files (exact schemas) and to JSON Lines files.

JSON lines are built column-wise with pyarrow compute, so that writing millions of events stays fast.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.events import LABEL_SCHEMA, TRANSACTION_SCHEMA

GROUND_TRUTH_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string(), nullable=False),
        pa.field("is_fraud", pa.bool_(), nullable=False),
        pa.field("pattern", pa.string(), nullable=False),
    ]
)

FILE_NAMES = {
    "transactions_parquet": "transactions.parquet",
    "transactions_jsonl": "transactions.jsonl",
    "labels_parquet": "labels.parquet",
    "labels_jsonl": "labels.jsonl",
    "ground_truth_parquet": "ground_truth.parquet",
}
_DAY_MS = 86_400_000
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


@cache
def _time_of_day_strings() -> tuple[pa.Array, pa.Array]:
    """'THH:MM:SS' for each second of a day and '.mmmZ' for each millisecond of a second."""
    seconds = pa.array([f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86_400)], pa.string())
    millis = pa.array([f".{ms:03d}Z" for ms in range(1000)], pa.string())
    return seconds, millis


def rfc3339_ms(epoch_ms: pa.Array) -> pa.Array:
    """RFC 3339 strings in UTC with millisecond precision, e.g. '2026-11-01T12:34:56.789Z'."""
    ms = np.asarray(epoch_ms.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
    days = ms // _DAY_MS
    first = int(days.min()) if len(days) else 0
    span = np.arange(first, int(days.max()) + 1 if len(days) else first, dtype="datetime64[D]")
    dates = pa.array(np.datetime_as_string(span, unit="D").tolist(), pa.string())
    seconds, millis = _time_of_day_strings()
    in_day = ms - days * _DAY_MS
    return pc.binary_join_element_wise(
        dates.take(pa.array(days - first)),
        seconds.take(pa.array(in_day // 1000)),
        millis.take(pa.array(in_day % 1000)),
        "",
    )


def _json_values(column: pa.Array) -> pa.Array:
    """Each value as JSON text; nulls as `null`."""
    t = column.type
    if pa.types.is_string(t):
        if column.null_count < len(column) and pc.any(pc.match_substring_regex(column, _NEEDS_ESCAPE)).as_py():
            text = pa.array([json.dumps(v) for v in column.to_pylist()], pa.string())
        else:
            text = pc.binary_join_element_wise('"', column, '"', "")
    elif pa.types.is_boolean(t):
        text = pc.if_else(column, "true", "false")
    elif pa.types.is_timestamp(t):
        if t.unit != "ms" or t.tz not in ("UTC", "+00:00"):
            raise TypeError(f"only timestamp[ms, UTC] is supported, not {t}")
        text = pc.binary_join_element_wise('"', rfc3339_ms(column), '"', "")
    elif pa.types.is_floating(t):
        if not pc.all(pc.is_finite(column)).as_py():
            raise ValueError("JSON has no NaN or infinity")
        text = column.cast(pa.string())
        text = pc.if_else(pc.match_substring_regex(text, r"[.e]"), text, pc.binary_join_element_wise(text, ".0", ""))
    elif pa.types.is_integer(t):
        text = column.cast(pa.string())
    else:
        raise TypeError(f"no JSON encoding for {t}")
    return pc.fill_null(text, "null")


def jsonl_lines(table: pa.Table) -> pa.Array:
    """One '{...}\\n' string per row; concatenated they are the JSON Lines text."""
    parts: list[pa.Array | str] = []
    for i, name in enumerate(table.column_names):
        parts.append(("{" if i == 0 else ",") + json.dumps(name) + ":")
        parts.append(_json_values(table.column(i).combine_chunks()))
    parts.append("}\n")
    return pc.binary_join_element_wise(*parts, "")


def _write_lines(handle: BinaryIO, lines: pa.Array) -> None:
    """Write the concatenated characters of a string array without copying them into Python objects."""
    if len(lines) == 0:
        return
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    data = lines.buffers()[2]
    handle.write(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


class EventWriters:
    """The five output files of a run, appended to chunk by chunk. Use as a context manager."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.files = {key: out_dir / name for key, name in FILE_NAMES.items()}
        self._tx = pq.ParquetWriter(self.files["transactions_parquet"], TRANSACTION_SCHEMA)
        self._labels = pq.ParquetWriter(self.files["labels_parquet"], LABEL_SCHEMA)
        self._truth = pq.ParquetWriter(self.files["ground_truth_parquet"], GROUND_TRUTH_SCHEMA)
        self._tx_jsonl = self.files["transactions_jsonl"].open("wb")
        self._labels_jsonl = self.files["labels_jsonl"].open("wb")

    def write(self, transactions: pa.Table, labels: pa.Table, truth: pa.Table) -> None:
        """Append one chunk (tables with exactly the output schemas)."""
        self._tx.write_table(transactions)
        self._labels.write_table(labels)
        self._truth.write_table(truth)
        _write_lines(self._tx_jsonl, jsonl_lines(transactions).cast(pa.string()))
        _write_lines(self._labels_jsonl, jsonl_lines(labels).cast(pa.string()))

    def close(self) -> None:
        """Finish all files."""
        self._tx.close()
        self._labels.close()
        self._truth.close()
        self._tx_jsonl.close()
        self._labels_jsonl.close()

    def __enter__(self) -> EventWriters:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
