"""The offline pipeline: validate raw events, compute every window feature as of each event, write the offline store.

Steps: (1) stream the raw files through `pipelines.validation` into a staging Parquet file (bounded memory), (2)
set aside duplicate transaction ids, (3) run the catalog's SQL (`pipelines.offline.sql`) in DuckDB, which spills
to disk when the data outgrows memory, (4) write one Parquet file per feature view, atomically, where the
`feature_repo/` file sources read them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from core.settings import OfflineLayout
from pipelines.events import LABELS, EventKind, transaction_kind
from pipelines.features.catalog import Catalog, load_catalog
from pipelines.offline.distributed import RayOptions, check_engine
from pipelines.offline.inputs import read_batches
from pipelines.offline.sql import view_features_sql
from pipelines.validation import REJECTED_SCHEMA, check

OnInvalid = Literal["reject", "quarantine"]
# progress(stage, fraction done in 0..1)
Progress = Callable[[str, float], None]

MAX_LISTED_ERRORS = 20


class InvalidEvents(ValueError):
    """Input rows that break SPEC's event rules, with `on_invalid="reject"`."""

    def __init__(self, path: Path, kind: EventKind, rejected: pa.Table, total: int) -> None:
        lines = [
            f"  row {r['row']}: {r['field']} {r['reason']}" + (f" (got {r['value']})" if r["value"] is not None else "")
            for r in rejected.slice(0, MAX_LISTED_ERRORS).to_pylist()
        ]
        more = f"\n  ... and {total - len(lines)} more" if total > len(lines) else ""
        super().__init__(
            f"{path}: {total} invalid {kind.name} event(s); nothing was written.\n"
            + "\n".join(lines)
            + more
            + "\nFix the rows, or run again with --quarantine to set them aside and load the rest."
        )
        self.rejected = rejected


@dataclass
class StageResult:
    read: int = 0
    valid: int = 0
    rejected: int = 0


@dataclass
class BackfillSummary:
    transactions: StageResult
    labels: StageResult
    duplicate_transactions: int
    labels_without_transaction: int
    rows_written: dict[str, int]
    seconds: float
    quarantine: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def transactions_per_second(self) -> float:
        return self.transactions.read / self.seconds if self.seconds > 0 else 0.0


def _stage(
    kind: EventKind,
    source: Path,
    staging: Path,
    quarantine: pq.ParquetWriter | None,
    progress: Progress,
) -> StageResult:
    """Validate `source` into `staging` (canonical schema plus the input row number `_row`)."""
    result = StageResult()
    schema = kind.schema.append(pa.field("_row", pa.int64()))
    with pq.ParquetWriter(staging, schema) as writer:
        for batch in read_batches(source, kind.schema.names):
            checked = check(kind, batch.columns, batch.rows, batch.unreadable)
            result.read += len(batch.rows)
            result.valid += checked.valid.num_rows
            result.rejected += checked.rejected.num_rows
            if checked.rejected.num_rows:
                if quarantine is None:
                    raise InvalidEvents(source, kind, checked.rejected, checked.rejected.num_rows)
                quarantine.write_table(_tag(checked.rejected, kind, source))
            if checked.valid.num_rows:
                writer.write_table(checked.valid.append_column("_row", pa.array(checked.valid_rows, pa.int64())))
            progress(f"validating {kind.name}s", batch.progress)
    return result


QUARANTINE_SCHEMA = pa.schema([pa.field("kind", pa.string()), pa.field("file", pa.string()), *REJECTED_SCHEMA])


def _tag(rejected: pa.Table, kind: EventKind, source: Path) -> pa.Table:
    n = rejected.num_rows
    return pa.Table.from_arrays(
        [pa.array([kind.name] * n), pa.array([str(source)] * n), *rejected.columns], schema=QUARANTINE_SCHEMA
    )


def _connect(work_dir: Path, threads: int | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = '{work_dir / 'spill'}'")
    con.execute("SET preserve_insertion_order = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def _copy(con: duckdb.DuckDBPyConnection, query: str, target: Path) -> int:
    """Write a query's rows to `target` atomically (write aside, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".parquet.partial")
    con.execute(f"COPY ({query}) TO '{partial}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 250000)")
    rows = pq.ParquetFile(partial).metadata.num_rows
    partial.replace(target)
    return int(rows)


def backfill(
    transactions: Path,
    labels: Path | None,
    layout: OfflineLayout,
    *,
    on_invalid: OnInvalid = "reject",
    progress: Progress | None = None,
    threads: int | None = None,
    engine: str = "embedded",
    ray: RayOptions | None = None,
    catalog: Catalog | None = None,
) -> BackfillSummary:
    """Compute every window feature for every valid transaction and write the offline store under `layout`.

    `engine`: "embedded" computes the window features in this process's DuckDB; "ray" runs the same SQL per hash
    shard of each entity on Ray (`pipelines.offline.distributed`, reached as `ray` says). Staging, validation,
    deduplication and the transactions and labels files are the same code on both.
    """
    check_engine(engine)
    catalog = catalog or load_catalog()
    started = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    work = layout.work_dir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    quarantine_path = layout.quarantine_file if on_invalid == "quarantine" else None
    quarantine = pq.ParquetWriter(work / "quarantine.parquet", QUARANTINE_SCHEMA) if quarantine_path else None
    try:
        kind = transaction_kind(catalog)  # SPEC's event plus the extra fields declared in the Feast repo
        tx_stage = _stage(kind, transactions, work / "transactions.parquet", quarantine, report)
        label_stage = StageResult()
        (work / "labels.parquet").unlink(missing_ok=True)
        if labels is not None:
            label_stage = _stage(LABELS, labels, work / "labels.parquet", quarantine, report)
        else:
            pq.write_table(LABELS.schema.append(pa.field("_row", pa.int64())).empty_table(), work / "labels.parquet")

        con = _connect(work, threads)
        con.execute(
            f"""CREATE VIEW staged AS SELECT *, epoch_ms(event_timestamp) AS ts_ms,
                   row_number() OVER (PARTITION BY transaction_id ORDER BY _row) AS occurrence,
                   min(_row) OVER (PARTITION BY transaction_id) AS first_row
                FROM read_parquet('{work / "transactions.parquet"}')"""
        )
        duplicates = con.sql(
            "SELECT _row AS row, 'transaction_id' AS field, "
            "'duplicate transaction_id (first seen at row ' || first_row || ')' AS reason, "
            "to_json(transaction_id)::VARCHAR AS value FROM staged WHERE occurrence > 1 ORDER BY _row"
        ).to_arrow_table()
        if duplicates.num_rows:
            if quarantine is None:
                raise InvalidEvents(transactions, kind, duplicates.cast(REJECTED_SCHEMA), duplicates.num_rows)
            quarantine.write_table(_tag(duplicates.cast(REJECTED_SCHEMA), kind, transactions))
        tx_stage.valid -= duplicates.num_rows
        tx_stage.rejected += duplicates.num_rows
        con.execute(
            "CREATE TABLE tx AS SELECT * EXCLUDE (occurrence, first_row, _row) FROM staged WHERE occurrence = 1"
        )
        con.execute(
            f"CREATE TABLE labels AS SELECT transaction_id, is_fraud, epoch_ms(label_timestamp) AS label_ms "
            f"FROM read_parquet('{work / 'labels.parquet'}')"
        )
        unmatched = con.execute(
            "SELECT count(*) FROM labels WHERE transaction_id NOT IN (SELECT transaction_id FROM tx)"
        ).fetchone()
        report("computing features", 0.0)
        written: dict[str, int] = {}
        views = [(v.view, view_features_sql(v)) for v in catalog.window_views]
        views.append((layout.transactions_name, "SELECT * EXCLUDE (ts_ms), ts_ms AS event_time_ms FROM tx"))
        views.append(
            (
                layout.labels_name,
                "SELECT transaction_id, is_fraud, epoch_ms(label_ms)::TIMESTAMPTZ AS label_timestamp FROM labels",
            )
        )
        if engine == "ray":
            from pipelines.offline.distributed import entity_features

            # The transactions file first: the Ray workers read it as their input.
            for name, query in views[len(catalog.window_views) :]:
                written[name] = _copy(con, query, layout.file(name))
            written |= entity_features(
                con,
                layout.transactions_file,
                work,
                ray or RayOptions(),
                lambda name, query: _copy(con, query, layout.file(name)),
                lambda fraction: report("computing features", fraction),
                catalog,
            )
            written = {name: written[name] for name, _ in views}
        else:
            for i, (name, query) in enumerate(views):
                written[name] = _copy(con, query, layout.file(name))
                report("computing features", (i + 1) / len(views))
        con.close()
    finally:
        if quarantine is not None:
            quarantine.close()
    if quarantine_path is not None:
        quarantine_path.parent.mkdir(parents=True, exist_ok=True)
        (work / "quarantine.parquet").replace(quarantine_path)
    shutil.rmtree(work, ignore_errors=True)
    return BackfillSummary(
        transactions=tx_stage,
        labels=label_stage,
        duplicate_transactions=duplicates.num_rows,
        labels_without_transaction=int(unmatched[0]) if unmatched else 0,
        rows_written=written,
        seconds=time.perf_counter() - started,
        quarantine=quarantine_path,
        files={name: layout.file(name) for name in written},
    )
