"""Reading raw event files in bounded batches: Parquet (a file or a folder of files) and JSON Lines."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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


def _jsonl_batches(path: Path, fields: Sequence[str], batch_rows: int) -> Iterator[tuple[RawBatch, int]]:
    """Batches of JSON objects; blank lines are skipped but keep their line numbers. Yields (batch, bytes read)."""
    line_no = 0
    with path.open("rb") as handle:
        while True:
            lines = handle.readlines(batch_rows * 200)
            if not lines:
                return
            records: list[dict[str, Any]] = []
            numbers: list[int] = []
            unreadable: dict[int, str] = {}
            for line in lines:
                line_no += 1
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    unreadable[len(records)] = f"line is not valid JSON ({exc})"
                    record = {}
                if not isinstance(record, dict):
                    unreadable[len(records)] = "line is not a JSON object"
                    record = {}
                records.append(record)
                numbers.append(line_no)
            columns: dict[str, pa.Array | Sequence[Any]] = {f: [r.get(f) for r in records] for f in fields}
            yield RawBatch(np.array(numbers, dtype=np.int64), columns, unreadable), handle.tell()


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
