"""The score log's files: one schema for every feature service, day partitions, files complete or absent.

Each API process writes its own files (`<root>/day=YYYY-MM-DD/part-<pid>-<ns>-<n>.parquet`), each first under a
hidden temporary name and then renamed, so that several uvicorn workers never share a file and a reader (or a
killed writer) never sees half a file. The feature vector is a list of (name, value) pairs: any feature service
fits the one schema, and a null value is a feature the model saw as missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FEATURE = pa.struct([pa.field("name", pa.string(), nullable=False), pa.field("value", pa.float64())])
SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string()),
        pa.field("time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("transaction_id", pa.string()),  # null for OIP infer (a tensor, no transaction)
        pa.field("model", pa.string(), nullable=False),
        pa.field("version", pa.int32(), nullable=False),
        pa.field("role", pa.string(), nullable=False),  # production, canary, shadow or direct (named by the request)
        pa.field("feature_service", pa.string()),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("feature_freshness_seconds", pa.float64()),
        pa.field("features", pa.list_(FEATURE)),
    ]
)
ROLES = ("production", "canary", "shadow", "direct")


def day_dir(root: Path, day: date) -> Path:
    return root / f"day={day.isoformat()}"


def write_part(root: Path, day: date, table: pa.Table, sequence: int) -> Path:
    """Write `table` as a new file of `day`'s partition: under a temporary name, then renamed (atomic)."""
    folder = day_dir(root, day)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{os.getpid()}-{time.time_ns()}-{sequence}.parquet"
    temporary = folder / f".{name}.tmp"
    pq.write_table(table, temporary, compression="zstd")
    os.replace(temporary, folder / name)
    return folder / name


def log_files(roots: Iterable[Path], days: int | None = None, today: date | None = None) -> list[Path]:
    """The complete files of the log under `roots` (the last `days` days only, when given)."""
    first = None if days is None else (today or datetime.now(UTC).date()) - timedelta(days=days - 1)
    files: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for folder in sorted(root.glob("day=*")):
            try:
                day = date.fromisoformat(folder.name.removeprefix("day="))
            except ValueError:
                continue
            if first is None or day >= first:
                files.extend(sorted(folder.glob("part-*.parquet")))
    return files


def read_log(roots: Iterable[Path], days: int | None = None, today: date | None = None) -> pa.Table:
    """Every logged score under `roots` (the last `days` days), as one table of `SCHEMA`."""
    tables = [pq.read_table(path, schema=SCHEMA) for path in log_files(roots, days, today)]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


def recent_files(roots: Iterable[Path], days: int, max_rows: int, today: date | None = None) -> list[Path]:
    """The newest files of the last `days` days holding about `max_rows` logged scores (whole files)."""

    def written(path: Path) -> tuple[str, int]:
        parts = path.stem.split("-")  # part-<pid>-<ns>-<n>
        return path.parent.name, int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0

    chosen: list[Path] = []
    rows = 0
    for path in sorted(log_files(roots, days, today), key=written, reverse=True):
        if rows >= max_rows:
            break
        chosen.append(path)
        rows += pq.ParquetFile(path).metadata.num_rows
    return chosen
