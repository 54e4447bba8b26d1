"""Reading raw event files in bounded batches: Parquet (a file or a folder of files) and JSON Lines."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class InputError(ValueError):
    """An input file that cannot be read at all."""


@dataclass
class RawBatch:
    """Raw columns of some rows; `rows` numbers them in the input (1-based line or row numbers)."""

    rows: np.ndarray
    columns: dict[str, pa.Array | Sequence[Any]]
    # Rows (0-based within the batch) that could not even be parsed, with why.
    unreadable: dict[int, str] = field(default_factory=dict)
    # Fraction of the input consumed after this batch, for progress bars.
    progress: float = 0.0


def input_files(path: Path) -> list[Path]:
    """The files behind `path`: itself, or the Parquet/JSONL files of a folder in name order."""
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in PARQUET_SUFFIXES + JSONL_SUFFIXES)
        if not files:
            raise InputError(f"{path} holds no .parquet or .jsonl files")
        return files
    if path.suffix not in PARQUET_SUFFIXES + JSONL_SUFFIXES:
        raise InputError(f"{path}: unknown format; use .parquet or .jsonl (JSON Lines)")
    return [path]


def _parquet_batches(path: Path, fields: Sequence[str], batch_rows: int) -> Iterator[tuple[dict[str, Any], int]]:
    try:
        reader = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path} is not a readable Parquet file: {exc}") from exc
    present = [f for f in fields if f in reader.schema_arrow.names]
    for batch in reader.iter_batches(batch_size=batch_rows, columns=present):
        yield {name: batch.column(name) for name in present}, batch.num_rows


# The C scanner under `json.loads`: the value at an index of a text and where it ends (StopIteration: no value there).
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _parse_line(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """One line as `json.loads` reads it: (record, None), (None, None) for a blank line, or ({}, why unreadable)."""
    if not line.strip():
        return None, None
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return {}, f"line is not valid JSON ({exc})"
    if not isinstance(record, dict):
        return {}, "line is not a JSON object"
    return record, None


def _parse_lines(lines: list[bytes]) -> list[tuple[dict[str, Any] | None, str | None]] | None:
    """Every line parsed as `_parse_line` parses it, faster: the block decoded once and each line scanned in C.

    Lines the scanner does not read as exactly one JSON object (blank, invalid, trailing whitespace, not an object)
    are read again by `_parse_line`, so the result is the same; None when the block is not UTF-8 throughout."""
    try:
        text = b"".join(lines).decode()
    except UnicodeDecodeError:
        return None
    texts = text.split("\n")  # readlines() splits at b"\n" only, so these are the lines, without their b"\n"
    if text.endswith("\n"):
        texts.pop()
    scanned: list[tuple[Any, int]] = []
    # map() goes on after its function raised, and list.extend keeps what it appended before the error (or the
    # StopIteration that ends it early): a line the scanner refuses is the first one not in `scanned`. Errors
    # json.loads does not catch either (ValueError: an integer of too many digits) come back from _parse_line.
    scanning = map(_scan, texts, itertools.repeat(0))
    while len(scanned) < len(texts):
        with contextlib.suppress(ValueError):  # JSONDecodeError included
            scanned.extend(scanning)
        if len(scanned) < len(texts):
            scanned.append((None, -1))
    if not scanned:
        return []
    values, ends = zip(*scanned, strict=True)
    if ends == tuple(map(len, texts)) and set(map(type, values)) == {dict}:  # the usual file: nothing to look at
        return list(zip(values, itertools.repeat(None)))
    return [
        (value, None) if end == len(line) and type(value) is dict else _rescan(value, end, line, raw)
        for value, end, line, raw in zip(values, ends, texts, lines, strict=True)
    ]


def _rescan(value: Any, end: int, line: str, raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A line the scanner did not read as a whole object: one followed by JSON whitespace only (a CRLF file's b"\r")
    is that object, as for json.loads; anything else is read by `_parse_line`."""
    if end >= 0 and type(value) is dict and not line[end:].strip(" \t\r"):
        return value, None
    return _parse_line(raw)


def _jsonl_batches(path: Path, fields: Sequence[str], batch_rows: int) -> Iterator[tuple[RawBatch, int]]:
    """Batches of JSON objects; blank lines are skipped but keep their line numbers. Yields (batch, bytes read)."""
    line_no = 0
    with path.open("rb") as handle:
        while True:
            lines = handle.readlines(batch_rows * 200)
            if not lines:
                return
            parsed = _parse_lines(lines)
            if parsed is None:
                parsed = [_parse_line(line) for line in lines]
            found, reasons = zip(*parsed, strict=True)
            unreadable: dict[int, str] = {}
            if None not in found and reasons.count(None) == len(reasons):  # every line an object
                records: Sequence[dict[str, Any]] = found
                numbers = np.arange(line_no + 1, line_no + 1 + len(lines), dtype=np.int64)
            else:
                kept_records: list[dict[str, Any]] = []
                kept: list[int] = []
                for offset, (record, reason) in enumerate(parsed):
                    if record is None:  # blank
                        continue
                    if reason is not None:
                        unreadable[len(kept_records)] = reason
                    kept_records.append(record)
                    kept.append(line_no + 1 + offset)
                records, numbers = kept_records, np.array(kept, dtype=np.int64)
            line_no += len(lines)
            columns: dict[str, pa.Array | Sequence[Any]] = {
                f: list(map(dict.get, records, itertools.repeat(f))) for f in fields
            }
            yield RawBatch(numbers, columns, unreadable), handle.tell()


def read_batches(path: Path, fields: Sequence[str], batch_rows: int = 250_000) -> Iterator[RawBatch]:
    """Yield the rows of every file behind `path` in batches of at most about `batch_rows` rows."""
    files = input_files(path)
    sizes = [max(f.stat().st_size, 1) for f in files]
    total = float(sum(sizes))
    done = 0.0
    for file, size in zip(files, sizes, strict=True):
        if file.suffix in PARQUET_SUFFIXES:
            rows_in_file = max(pq.ParquetFile(file).metadata.num_rows, 1)
            next_row = 1
            for columns, count in _parquet_batches(file, fields, batch_rows):
                rows = np.arange(next_row, next_row + count, dtype=np.int64)
                next_row += count
                yield RawBatch(rows, columns, progress=(done + size * (next_row - 1) / rows_in_file) / total)
        else:
            for batch, consumed in _jsonl_batches(file, fields, batch_rows):
                batch.progress = (done + consumed) / total
                yield batch
        done += size
