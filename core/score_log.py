"""The score log's files: one schema for every feature service, day partitions, files complete or absent.

Each API process writes its own files (`<root>/day=YYYY-MM-DD/part-<pid>-<ns>-<n>.parquet`), each first under a
hidden temporary name and then renamed, so that several uvicorn workers never share a file and a reader (or a
killed writer) never sees half a file.

Two layouts of the feature vector. The files written now (`VECTORS`) hold it as `feature_values`, a list<float64>
(a null value: a feature the model saw as missing), and `feature_names`, the JSON list of its names, a dictionary
column: each model's names are stored once per row group, not once per value, and the writer builds the column
from the request's matrix in one call (the older layout made the writer thread repeat every name for every value,
a fifth of the API's samples under a score:batch load; bench/README.md). Files written before (`SCHEMA`) hold it as
a list of (name, value) pairs. `read_file` reads either and gives `SCHEMA` (the readers' one form: any feature
service fits it), so the report and `train --from-logs` read the files users already have.

Compaction (`compact_day`, `fraudserve monitor compact`) merges a finished day's files into one
`compacted-<ns>.parquet` whose Parquet metadata lists the files it holds and where their rows are (`sources`:
name, first row, rows). It is written under a temporary name and renamed, and only then are its sources removed.
Readers list a day as its compacted files plus the files no compacted file lists (`log_files`), so a listing taken
at any moment holds each row once; a listed file removed before it is read is read from the compacted file that
lists it (`read_file`), the same rows.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
# The layout written now: `features` as its names (a JSON list, one dictionary entry per distinct list) and values.
VECTORS = pa.schema(
    [
        *(SCHEMA.field(name) for name in SCHEMA.names if name != "features"),
        pa.field("feature_names", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("feature_values", pa.list_(pa.float64()), nullable=False),
    ]
)
ROLES = ("production", "canary", "shadow", "direct")
COMPACTED = "compacted-"
SOURCES_KEY = b"fraudserve.sources"  # JSON [[file name, first row, rows], ...] of a compacted file
COMPACT_ROW_GROUP = 500_000


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


def _sources(path: Path) -> list[tuple[str, int, int]]:
    """The files a compacted file holds, with the first row and count of each."""
    metadata = pq.read_schema(path).metadata or {}
    return [(str(n), int(first), int(rows)) for n, first, rows in json.loads(metadata.get(SOURCES_KEY, b"[]"))]


def day_files(folder: Path) -> list[Path]:
    """A day's complete files, each row in exactly one: the compacted files, and the parts none of them lists."""
    compacted = sorted(folder.glob(f"{COMPACTED}*.parquet"))
    covered: set[str] = set()
    for path in compacted:
        try:
            covered.update(name for name, _, _ in _sources(path))
        except FileNotFoundError:  # itself compacted since the listing: a newer one lists its rows
            continue
    return [p for p in [*compacted, *sorted(folder.glob("part-*.parquet"))] if p.name not in covered and p.exists()]


def log_files(roots: Iterable[Path], days: int | None = None, today: date | None = None) -> list[Path]:
    """The complete files of the log under `roots` (the last `days` days only, when given)."""
    first = None if days is None else (today or datetime.now(UTC).date()) - timedelta(days=days - 1)
    files: list[Path] = []
    for root in roots:
        for day, folder in day_folders(root):
            if first is None or day >= first:
                files.extend(day_files(folder))
    return files


def day_folders(root: Path) -> list[tuple[date, Path]]:
    if not root.is_dir():
        return []
    folders = []
    for folder in sorted(root.glob("day=*")):
        try:
            folders.append((date.fromisoformat(folder.name.removeprefix("day=")), folder))
        except ValueError:
            continue
    return folders


def vectors_table(columns: dict[str, pa.Array], names: Sequence[str], codes: np.ndarray, values: pa.Array) -> pa.Table:
    """A table of the `VECTORS` layout: `columns` (every `SCHEMA` column but `features`), each row's feature names
    as a code into `names` (JSON lists), and `values` (a list<float64> array, one list per row)."""
    dictionary = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(names, pa.string()))
    return pa.Table.from_pydict({**columns, "feature_names": dictionary, "feature_values": values}, schema=VECTORS)


def as_pairs(table: pa.Table) -> pa.Table:
    """A table of the `VECTORS` layout as `SCHEMA` (the vector as (name, value) pairs), column-wise: each distinct
    name list is parsed once, and every value gets its name by index."""
    names = table.column("feature_names").combine_chunks()
    values = table.column("feature_values").combine_chunks()
    if isinstance(names, pa.ChunkedArray):  # an empty table
        names = pa.DictionaryArray.from_arrays(pa.array([], pa.int32()), pa.array([], pa.string()))
        values = pa.array([], pa.list_(pa.float64()))
    lists = [json.loads(text) for text in names.dictionary.to_pylist()]
    listed = np.array([len(names_) for names_ in lists], dtype=np.int64)
    starts = np.cumsum(listed) - listed  # each list's first name in `every`
    every = pa.array([name for names_ in lists for name in names_], pa.string())
    codes = names.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(codes) and not np.array_equal(listed[codes], lengths):
        row = int(np.flatnonzero(listed[codes] != lengths)[0])
        raise ValueError(f"score log row {row}: {lengths[row]} feature values for {listed[codes[row]]} names")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # The name of value k of row r: every[starts[code[r]] + k], for all values at once.
    at = np.repeat(starts[codes] - offsets[:-1], lengths) + np.arange(int(offsets[-1]), dtype=np.int64)
    pairs = pa.StructArray.from_arrays([every.take(pa.array(at)), pc.list_flatten(values)], fields=list(FEATURE))
    features = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pairs)
    columns = {name: table.column(name) for name in SCHEMA.names if name != "features"}
    return pa.Table.from_pydict({**columns, "features": features}, schema=SCHEMA)


def as_vectors(table: pa.Table) -> pa.Table:
    """A table of `SCHEMA` (the older layout) as `VECTORS`: the inverse of `as_pairs`. Each row's names are joined
    in Python (for conversions and tests, not the API's writer, which builds `VECTORS` from its matrices)."""
    features = table.column("features").combine_chunks()
    if isinstance(features, pa.ChunkedArray):  # no chunks: an empty table
        features = pa.array([], SCHEMA.field("features").type)
    features = pc.fill_null(features, pa.scalar([], features.type))
    lengths = pc.list_value_length(features).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(features)
    every = flat.field("name").to_pylist()
    ends = np.cumsum(lengths).tolist()
    lists: dict[str, int] = {}
    codes = np.empty(len(lengths), dtype=np.int32)
    for row, (end, length) in enumerate(zip(ends, lengths.tolist(), strict=True)):
        codes[row] = lists.setdefault(json.dumps(every[end - length : end]), len(lists))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.ListArray.from_arrays(pa.array(offsets), flat.field("value"))
    columns = {name: table.column(name) for name in SCHEMA.names if name != "features"}
    return vectors_table(columns, list(lists), codes, values)


def _read_stored(path: Path) -> pa.Table:
    """A file as it is stored: `VECTORS` (with the file's metadata), or `SCHEMA` for files of the older layout."""
    table = pq.read_table(path)
    if "feature_values" in table.schema.names:
        return table.select(VECTORS.names).cast(VECTORS.with_metadata(table.schema.metadata))
    return table.select(SCHEMA.names).cast(SCHEMA.with_metadata(table.schema.metadata))


def _as_schema(table: pa.Table) -> pa.Table:
    return as_pairs(table) if "feature_values" in table.schema.names else table.replace_schema_metadata(None)


def read_file(path: Path) -> pa.Table:
    """One file of the log as `SCHEMA`, whichever layout it was written in; a file compacted since it was listed is
    read from the compacted file."""
    try:
        return _as_schema(_read_stored(path))
    except FileNotFoundError:
        for compacted in sorted(path.parent.glob(f"{COMPACTED}*.parquet"), reverse=True):
            try:
                found = [(first, rows) for name, first, rows in _sources(compacted) if name == path.name]
                if found:
                    return _as_schema(_read_stored(compacted).slice(*found[0]))
            except FileNotFoundError:
                continue
        raise


def read_log(roots: Iterable[Path], days: int | None = None, today: date | None = None) -> pa.Table:
    """Every logged score under `roots` (the last `days` days), as one table of `SCHEMA`."""
    tables = [read_file(path) for path in log_files(roots, days, today)]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()


@contextmanager
def _compaction_lock(root: Path) -> Iterator[None]:
    """One compaction of a log root at a time (two would each list the same parts)."""
    with (root / ".compact.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def compact_day(folder: Path) -> Path | None:
    """Merge the day's files into one compacted file (None when it has one file or none): written under a temporary
    name, renamed into place, then its sources removed. Only for a finished day: parts written after the listing
    stay as they are (the next compaction takes them)."""
    with _compaction_lock(folder.parent):
        files = day_files(folder)
        if len(files) < 2:
            return None
        sources: list[list[object]] = []
        first = 0
        for path in files:
            if path.name.startswith(COMPACTED):  # its own sources stay findable through the new file
                sources.extend([name, first + start, rows] for name, start, rows in _sources(path))
            rows = pq.ParquetFile(path).metadata.num_rows
            sources.append([path.name, first, rows])
            first += rows
        name = f"{COMPACTED}{time.time_ns()}.parquet"
        temporary = folder / f".{name}.tmp"
        # The files' own layout when they share it; a day that mixes both is compacted into the older one, which
        # every file can be read as.
        older = any("feature_values" not in pq.read_schema(path).names for path in files)
        layout = SCHEMA if older else VECTORS
        schema = layout.with_metadata({SOURCES_KEY: json.dumps(sources).encode()})
        with pq.ParquetWriter(temporary, schema, compression="zstd") as writer:
            pending: list[pa.Table] = []
            waiting = 0
            for path in files:
                stored = _read_stored(path)
                table = _as_schema(stored) if older else stored.replace_schema_metadata(None)
                pending.append(table)
                waiting += table.num_rows
                if waiting >= COMPACT_ROW_GROUP:
                    writer.write_table(pa.concat_tables(pending).cast(schema), row_group_size=COMPACT_ROW_GROUP)
                    pending, waiting = [], 0
            if pending:
                writer.write_table(pa.concat_tables(pending).cast(schema), row_group_size=COMPACT_ROW_GROUP)
        os.replace(temporary, folder / name)
        for path in files:
            path.unlink()
        return folder / name


def compact(roots: Iterable[Path], days: int | None = None, today: date | None = None) -> list[Path]:
    """Compact every finished day (before `today`, UTC; of the last `days` days when given) under `roots`."""
    today = today or datetime.now(UTC).date()
    first = None if days is None else today - timedelta(days=days)
    written = []
    for root in roots:
        for day, folder in day_folders(root):
            if day < today and (first is None or day >= first):
                made = compact_day(folder)
                if made is not None:
                    written.append(made)
    return written


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
        with suppress(FileNotFoundError):  # compacted since the listing: `read_file` reads it from the compacted file
            rows += pq.ParquetFile(path).metadata.num_rows
        chosen.append(path)
    return chosen
