"""The backfill's window features on Ray: the same catalog SQL as the embedded path, run per hash shard of the entity.

Every window feature is computed per entity (card, merchant, device, IP): each SQL window is `PARTITION BY` the
entity's key, and the fraud rate's label timeline is keyed the same way. So hash-partitioning the events by the key
and running `pipelines.offline.sql.view_features_sql` unchanged on each shard, in an in-process DuckDB, gives
the rows of the embedded path: the same rows and values, where window sums and means may differ in the last bits
(DuckDB's window segment tree groups the additions by the rows that share its hash partition; the embedded path
does the same when other keys are added to its input). Ray does the distribution, as a map/reduce of Ray tasks: a
map task reads a slice of rows of the deduplicated transactions (the offline store's transactions file, which the
shared part of `backfill` writes first) and splits it by shard (DuckDB's `hash(key) % shards`); a reduce task per
shard gathers its pieces from the object store and runs the catalog's SQL; the driver streams the shards' rows into
the feature view's Parquet file with the same DuckDB writer as the embedded path. The merchant's fraud rate needs
the labels: each label travels with its transaction's merchant, to that merchant's shard.

Why Ray tasks rather than Ray Data's `groupby(...).map_groups` (tried first): on this 2-core machine Ray Data's
keyed shuffle cost 6 to 28 s per entity even on 1,700 transactions (operator and aggregator-actor start-up), where
plain tasks on warm workers cost milliseconds; the tasks' shuffle is the same hash partitioning, explicitly.

Staging, validation and deduplication are `backfill`'s own and run in the driver, as in the embedded path. With a
cluster (`FRAUDSERVE_RAY_ADDRESS`), FRAUDSERVE_HOME must be on storage that every node sees (workers read the
transactions file and the routed labels under the offline store by path) and fraudserve must be installed on the
nodes (the shard functions are this module's).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.features.catalog import Catalog, WindowView, load_catalog
from pipelines.offline.sql import view_features_sql

ENGINES = ("embedded", "ray")
SHARD = "_shard"
# The transactions file's name for the SQL's `ts_ms`.
TX_TIME = "event_time_ms"


class EngineError(ValueError):
    """A bad engine choice or a Ray that cannot be started or joined."""


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise EngineError(
            f"unknown offline engine {engine!r}: choose one of {', '.join(ENGINES)} "
            "(FRAUDSERVE_OFFLINE_ENGINE or `fraudserve features backfill --engine`)"
        )
    return engine


@dataclass(frozen=True)
class RayOptions:
    """How the backfill reaches Ray.

    address: None starts a local Ray for this backfill (and shuts it down after); "auto" or "ray://host:10001" joins
    a running cluster (left running). shards: hash shards per entity (default 2 per CPU of the cluster).
    object_store_mb: the local Ray's object store (it spills to disk beyond it); ignored when joining a cluster.
    cpus: the local Ray's CPUs (default all cores). rows_per_task: transactions read by one map task.
    """

    address: str | None = None
    shards: int | None = None
    object_store_mb: int = 2048
    cpus: int | None = None
    rows_per_task: int = 500_000


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise EngineError(
            "the ray offline engine needs Ray: pip install 'fraudserve[ray]' "
            "(or set FRAUDSERVE_OFFLINE_ENGINE=embedded)"
        ) from exc
    return ray


@contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """A quiet Ray (no dashboard, worker logs not forwarded): a local one started and stopped here, or a cluster."""
    ray = _ray()
    if ray.is_initialized():  # the caller's Ray: use it, leave it running
        yield ray
        return
    quiet: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "configure_logging": True,
    }
    try:
        if options.address:
            quiet.pop("include_dashboard")
            ray.init(address=options.address, **quiet)
        else:
            ray.init(
                address="local",  # a new Ray of our own, never one that RAY_ADDRESS or an earlier `ray start` names
                num_cpus=options.cpus or os.cpu_count() or 1,
                object_store_memory=options.object_store_mb * 2**20,
                **quiet,
            )
    except Exception as exc:
        where = f"join the Ray cluster at {options.address!r}" if options.address else "start a local Ray"
        raise EngineError(
            f"could not {where}: {exc}. Check FRAUDSERVE_RAY_ADDRESS (unset: a local Ray; 'auto' or "
            "'ray://host:10001': a running cluster), or use FRAUDSERVE_OFFLINE_ENGINE=embedded."
        ) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------- the functions on workers
# Rows of a Parquet file: the row groups that hold them, the offset of the first within those, how many.
Slice = tuple[list[int], int, int]
LABEL_SCHEMA = pa.schema(
    [pa.field("transaction_id", pa.string()), pa.field("is_fraud", pa.bool_()), pa.field("label_ms", pa.int64())]
)


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET threads = 1")  # one Ray task, one CPU
    return con


def _split(con: duckdb.DuckDBPyConnection, query: str, key: str, shards: int) -> list[pa.Table]:
    """The rows of `query` with a non-null `key`, one table per shard of the key."""
    tagged = con.sql(
        f"SELECT *, (hash({key}) % {shards})::BIGINT AS {SHARD} FROM ({query}) WHERE {key} IS NOT NULL"
    ).to_arrow_table()
    shard = tagged[SHARD]
    tagged = tagged.drop_columns([SHARD])
    return [tagged.filter(pc.equal(shard, s)) for s in range(shards)]


def _map_transactions(path: str, rows: Slice, columns: list[str], key: str, shards: int) -> tuple[pa.Table, ...]:
    """Map: a slice of the transactions file (its time as `ts_ms`), split by the shard of `key`."""
    row_groups, offset, length = rows
    table = pq.ParquetFile(path).read_row_groups(row_groups, columns=columns).slice(offset, length)
    con = _connect()
    con.register("batch", table)
    selected = ", ".join(c if c != TX_TIME else f"{TX_TIME} AS ts_ms" for c in columns)
    parts = _split(con, f"SELECT {selected} FROM batch", key, shards)
    con.close()
    return tuple(parts)


def _map_labels(path: str, key: str, shards: int) -> tuple[pa.Table, ...]:
    """Map: the labels, each to the shard of its transaction's `key`."""
    con = _connect()
    parts = _split(con, f"SELECT transaction_id, is_fraud, label_ms, {key} FROM read_parquet('{path}')", key, shards)
    con.close()
    return tuple(part.drop_columns([key]).cast(LABEL_SCHEMA) for part in parts)


def _reduce(sql: str, transaction_parts: int, *parts: pa.Table) -> pa.Table:
    """Reduce: the catalog's SQL on one shard, as `tx` and `labels` (the embedded path's tables)."""
    con = _connect()
    tx = pa.concat_tables(parts[:transaction_parts])
    labels = pa.concat_tables([LABEL_SCHEMA.empty_table(), *parts[transaction_parts:]])
    con.register("tx_arrow", tx)
    con.register("labels_arrow", labels)
    con.execute("CREATE TABLE tx AS SELECT * FROM tx_arrow")
    con.execute("CREATE TABLE labels AS SELECT * FROM labels_arrow")
    table = con.sql(sql).to_arrow_table()
    con.close()
    return table


# ------------------------------------------------------------------------------------------------------- the driver
def _columns(view: WindowView, available: list[str]) -> list[str]:
    """The transaction columns that the view's SQL reads."""
    wanted = {"transaction_id", TX_TIME, view.join_key, *view.columns}
    return [name for name in available if name in wanted]


def _slices(path: Path, rows_per_slice: int) -> list[Slice]:
    """The file's rows in consecutive slices of `rows_per_slice` (one map task each), as the row groups that hold
    a slice, and the slice's offset and length within them."""
    metadata = pq.ParquetFile(path).metadata
    starts = [0]
    for i in range(metadata.num_row_groups):
        starts.append(starts[-1] + metadata.row_group(i).num_rows)
    slices: list[Slice] = []
    for begin in range(0, starts[-1], rows_per_slice):
        end = min(begin + rows_per_slice, starts[-1])
        groups = [i for i in range(metadata.num_row_groups) if starts[i] < end and starts[i + 1] > begin]
        slices.append((groups, begin - starts[groups[0]], end - begin))
    return slices


def entity_features(
    con: duckdb.DuckDBPyConnection,
    transactions_file: Path,
    work: Path,
    options: RayOptions,
    write: Callable[[str, str], int],
    progress: Callable[[float], None],
    catalog: Catalog | None = None,
) -> dict[str, int]:
    """Every window view computed on Ray; `write(view, query)` writes a query of `con` to the view's file.

    `con` is the backfill's connection, with its `tx` and `labels` tables; `transactions_file` holds the same
    deduplicated transactions (as the offline store's transactions file, `event_time_ms` for `ts_ms`).
    """
    views = (catalog or load_catalog()).window_views
    written: dict[str, int] = {}
    available = pq.read_schema(transactions_file).names
    slices = _slices(transactions_file, options.rows_per_task)
    with ray_session(options) as ray:
        shards = options.shards or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        map_transactions = ray.remote(_map_transactions).options(num_returns=shards, num_cpus=1)
        map_labels = ray.remote(_map_labels).options(num_returns=shards, num_cpus=1)
        reduce = ray.remote(_reduce).options(num_cpus=1)
        for i, view in enumerate(views):
            key, sql = view.join_key, view_features_sql(view)
            columns = _columns(view, available)
            pieces = [
                _as_list(map_transactions.remote(str(transactions_file), rows, columns, key, shards)) for rows in slices
            ]
            label_pieces: list[Any] = []
            if view.needs_labels:  # each label with its transaction's key, to that key's shard
                labels_file = work / f"labels_by_{key}.parquet"
                con.execute(
                    f"COPY (SELECT l.transaction_id, l.is_fraud, l.label_ms, t.{key} FROM labels l "
                    f"JOIN tx t USING (transaction_id)) TO '{labels_file}' (FORMAT parquet)"
                )
                label_pieces = _as_list(map_labels.remote(str(labels_file), key, shards))
            results = [
                reduce.remote(sql, len(pieces), *(p[s] for p in pieces), *([label_pieces[s]] if label_pieces else []))
                for s in range(shards)
                if pieces  # no transactions: an empty file of the view's schema
            ]
            del pieces, label_pieces  # the reduces hold them now; the object store frees each piece after use
            # The output schema: the same SQL on the driver's tables, no rows.
            schema = con.sql(f"SELECT * FROM ({sql}) LIMIT 0").to_arrow_table().schema

            def batches(
                results: list[Any] = results, schema: pa.Schema = schema, i: int = i
            ) -> Iterator[pa.RecordBatch]:
                for s, ref in enumerate(results):
                    table = ray.get(ref)
                    results[s] = None  # let the object store free the shard's rows once written
                    progress((i + (s + 1) / len(results) * 0.99) / len(views))
                    yield from table.cast(schema).to_batches()

            con.register("computed", pa.RecordBatchReader.from_batches(schema, batches()))
            written[view.view] = write(view.view, "SELECT * FROM computed")
            con.unregister("computed")
            progress((i + 1) / len(views))
    return written


def _as_list(refs: Any) -> list[Any]:
    """`num_returns=1` gives one ref, not a list of one."""
    return list(refs) if isinstance(refs, list | tuple) else [refs]
