"""Offline batch scoring: a Parquet file of feature rows in, a Parquet file of scores and labels out.

    scorer = BatchScorer.open(open_registry(settings, check_features=False), "fraud", "production", device="auto")
    summary = scorer.score_parquet(Path("rows.parquet"), Path("scores.parquet"))

The input holds one row per transaction: an id column (transaction_id by default), every feature the model's
manifest lists, named as there (in any order; nulls are missing values, as in the API), and any other columns,
which are passed through to the output unchanged. The output holds the id, the passed-through columns, `score`
(P(fraud)) and `label` from the manifest's thresholds.

There is no `uncertain` label here, unlike the API: the API knows how fresh each online feature is when it scores,
an offline file does not say when its features were computed, so every row is labelled from its score alone.

The file is read in record batches of `chunk_rows` (pyarrow's ParquetFile.iter_batches) and each batch is scored
and written before the next is read, so memory is bounded by the chunk, not the file: a 100 M-row file scores in
the memory of one chunk. Batches are large because that is where the model libraries (and the GPU) are fast.

Point in time: `BatchScorer.score_transactions` (`--point-in-time`) takes transaction ids instead and builds their
features as of each transaction's time from the offline store through Feast, as the training set does: a backtest
of a model on past transactions.

Where: `device` auto, cpu or cuda (FRAUDSERVE_DEVICE, see core/models/device.py). Unlike the API, which
refuses to start with cuda and no GPU, a batch job asked for cuda on a machine without a GPU or without nvForest
falls back to the CPU and says so (`DeviceChoice.reason`): an offline job is better late than not at all, and the
summary reports the device actually used. On the GPU nvForest predicts in single precision: scores agree with the
CPU's to about 1e-6 (bench/README.md), so a label can differ only for a score within that of a threshold.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import FraudserveError
from core.models.device import cuda_available
from core.models.manifest import Thresholds
from core.models.runtime import ModelLoadError, Runtime, load_runtime, model_engine
from fraudserve.registry import PRODUCTION, ModelRegistry, ModelVersion

if TYPE_CHECKING:
    from feast import FeatureStore

    from core.settings import OfflineLayout

log = logging.getLogger("fraudserve.batch_scoring")

DEFAULT_CHUNK_ROWS = 100_000
ID_COLUMN = "transaction_id"
SCORE_COLUMN = "score"
LABEL_COLUMN = "label"
LABELS = ("not_fraud", "suspicious", "highly_suspicious")  # the order of `label_indices`

Progress = Callable[[int, int], None]  # rows done, rows in the file


class BatchScoringError(FraudserveError):
    """The input file cannot be scored by the model (missing or non-numeric feature columns, no id column, ...)."""

    code = "invalid_batch_input"
    status = 422


@dataclass(frozen=True)
class DeviceChoice:
    """The device asked for, the one used, and why the CPU when a GPU was asked for (or `auto` found none)."""

    requested: str
    used: str
    reason: str | None = None

    @property
    def fell_back(self) -> bool:
        """cuda was asked for explicitly and the CPU does the work: the user must be told."""
        return self.requested == "cuda" and self.used == "cpu"

    def describe(self) -> str:
        if self.fell_back:
            return f"device cuda requested but {self.reason}: scoring on the CPU instead"
        if self.used == "cpu" and self.requested == "auto" and self.reason:
            return f"scoring on the CPU ({self.reason})"
        return f"scoring on {self.used}"


def choose_device(requested: str) -> DeviceChoice:
    """cpu, or cuda where a GPU and nvForest are present; cuda without them is the CPU with the reason."""
    if requested not in ("auto", "cpu", "cuda"):
        raise BatchScoringError(f"device {requested!r} is not one of auto, cpu, cuda")
    if requested == "cpu":
        return DeviceChoice("cpu", "cpu")
    ok, why = cuda_available()
    return DeviceChoice(requested, "cuda" if ok else "cpu", None if ok else why)


def label_indices(scores: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Index into LABELS for each score: the same rule as Thresholds.label, on a whole array at once."""
    indices = np.zeros(len(scores), dtype=np.int8)
    indices[scores >= thresholds.suspicious] = 1
    indices[scores >= thresholds.highly_suspicious] = 2
    return indices


def labels_for(scores: np.ndarray, thresholds: Thresholds) -> pa.Array:
    return pc.take(pa.array(LABELS, pa.string()), pa.array(label_indices(scores, thresholds)))


@dataclass
class BatchSummary:
    model: str
    version: int
    flavor: str
    input: Path
    output: Path
    device: DeviceChoice
    rows: int = 0
    chunks: int = 0
    seconds: float = 0.0  # reading, scoring and writing
    predict_seconds: float = 0.0  # the model alone
    labels: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LABELS, 0))

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "version": self.version,
            "flavor": self.flavor,
            "input": str(self.input),
            "output": str(self.output),
            "device_requested": self.device.requested,
            "device": self.device.used,
            "device_reason": self.device.reason,
            "rows": self.rows,
            "chunks": self.chunks,
            "seconds": round(self.seconds, 4),
            "predict_seconds": round(self.predict_seconds, 4),
            "rows_per_second": round(self.rows_per_second, 1),
            "labels": dict(self.labels),
        }


_NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal, pa.types.is_null)


def _numeric(dtype: pa.DataType) -> bool:
    return any(check(dtype) for check in _NUMERIC)


def feature_matrix(batch: pa.RecordBatch | pa.Table, features: Sequence[str]) -> np.ndarray:
    """Rows x features as float64 in the manifest's order, nulls as NaN (what the API gives the model)."""
    matrix = np.empty((batch.num_rows, len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        column = pc.cast(batch.column(name), pa.float64())
        matrix[:, j] = column.to_numpy(zero_copy_only=False)
    return matrix


class BatchScorer:
    """A registered model version loaded for batch scoring on the chosen device."""

    def __init__(self, model: ModelVersion, runtime: Runtime, device: DeviceChoice) -> None:
        self.model = model
        self.runtime = runtime
        self.device = device

    @property
    def features(self) -> list[str]:
        return self.model.manifest.feature_names

    @classmethod
    def open(
        cls,
        registry: ModelRegistry,
        name: str = "fraud",
        version: int | str = PRODUCTION,
        *,
        device: str = "auto",
        threads: int = 0,
    ) -> BatchScorer:
        """Resolve name + version or alias, and load its model file on the GPU if asked and possible, else the CPU."""
        model = registry.get(name, version)
        path = registry.model_path(name, model.version)
        flavor = model.manifest.flavor
        choice = choose_device(device)
        if choice.used == "cuda":
            try:
                return cls(model, load_runtime(flavor, path, threads=threads, device="cuda"), choice)
            except (ImportError, ModelLoadError) as exc:  # a broken nvForest install, a model it cannot read
                choice = DeviceChoice(choice.requested, "cpu", f"the GPU runtime could not load the model ({exc})")
        return cls(model, load_runtime(flavor, path, threads=threads, device="cpu", engine=model_engine()), choice)

    def check_schema(self, schema: pa.Schema, id_column: str) -> list[str]:
        """The pass-through columns; BatchScoringError naming every missing or unusable column."""
        names = schema.names
        missing = [f for f in self.features if f not in names]
        if missing:
            raise BatchScoringError(
                f"the input lacks {len(missing)} of the {len(self.features)} features that "
                f"{self.model.name} version {self.model.version} reads: {', '.join(missing)}",
                {"missing": missing},
            )
        if id_column not in names:
            raise BatchScoringError(
                f"the input has no id column {id_column!r} (columns: {', '.join(names)}); name it with --id-column"
            )
        unusable = [f"{f} ({schema.field(f).type})" for f in self.features if not _numeric(schema.field(f).type)]
        if unusable:
            raise BatchScoringError(f"feature columns that are not numbers or booleans: {', '.join(unusable)}")
        clashes = [c for c in (SCORE_COLUMN, LABEL_COLUMN) if c in names and c not in self.features]
        if clashes:
            raise BatchScoringError(
                f"the input already has a column named {' and '.join(clashes)}, which the output writes; rename it"
            )
        return [n for n in names if n != id_column and n not in self.features]

    def score_batch(self, batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, pa.Array]:
        """Scores and labels of the rows of one batch."""
        scores = self.runtime.predict(feature_matrix(batch, self.features))
        return scores, labels_for(scores, self.model.manifest.thresholds)

    def score_parquet(
        self,
        input_path: Path,
        output_path: Path,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        id_column: str = ID_COLUMN,
        progress: Progress | None = None,
    ) -> BatchSummary:
        """Score every row of `input_path` (feature rows) into `output_path`, `chunk_rows` at a time."""
        source = _open_input(input_path, output_path, chunk_rows)
        schema = source.schema_arrow
        passthrough = self.check_schema(schema, id_column)
        wanted = list(dict.fromkeys([id_column, *passthrough, *self.features]))  # only what the output needs
        batches = source.iter_batches(batch_size=chunk_rows, columns=wanted)
        fields = [schema.field(id_column), *(schema.field(n) for n in passthrough)]
        return self._write(batches, fields, source.metadata.num_rows, input_path, output_path, progress)

    def score_transactions(
        self,
        store: FeatureStore,
        layout: OfflineLayout,
        input_path: Path,
        output_path: Path,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        id_column: str = ID_COLUMN,
        progress: Progress | None = None,
    ) -> BatchSummary:
        """Score transactions by id, their features built point in time by Feast, as for a training set.

        `input_path` holds transaction ids of the offline store (and optionally `event_timestamp`, the instant to
        score as of; by default each transaction's own time); the entity keys come from the offline store's
        transactions and the features from Feast's get_historical_features on the model's feature service, one
        chunk at a time. The same rows as training saw, so a backtest of a model scores what it would have scored.
        """
        source = _open_input(input_path, output_path, chunk_rows)
        schema = source.schema_arrow
        if id_column not in schema.names:
            raise BatchScoringError(f"the input has no id column {id_column!r} (columns: {', '.join(schema.names)})")
        clashes = [c for c in (*self.features, SCORE_COLUMN, LABEL_COLUMN) if c in schema.names]
        if clashes:
            raise BatchScoringError(
                f"the input has columns the output computes: {', '.join(clashes)}; with point-in-time features the "
                "input holds transaction ids, and features come from the offline store"
            )
        passthrough = [n for n in schema.names if n != id_column]
        service = self.model.manifest.feature_service
        batches = (
            point_in_time_rows(store, service, self.features, layout, batch, id_column)
            for batch in source.iter_batches(batch_size=chunk_rows)
        )
        fields = [schema.field(id_column), *(schema.field(n) for n in passthrough)]
        return self._write(batches, fields, source.metadata.num_rows, input_path, output_path, progress)

    def _write(
        self,
        batches: Iterable[pa.RecordBatch | pa.Table],
        fields: list[pa.Field],
        total: int,
        input_path: Path,
        output_path: Path,
        progress: Progress | None,
    ) -> BatchSummary:
        """Score each batch and write `fields` (the id, then the pass-through columns), score and label.

        The output is written to a hidden file beside the target and renamed over it at the end, so a failed or
        interrupted run never leaves a half-written file under the name a later job would read.
        """
        out_schema = pa.schema([*fields, pa.field(SCORE_COLUMN, pa.float64()), pa.field(LABEL_COLUMN, pa.string())])
        manifest = self.model.manifest
        summary = BatchSummary(
            self.model.name, self.model.version, manifest.flavor.value, input_path, output_path, self.device
        )
        output_path.parent.mkdir(parents=True, exist_ok=True)
        partial = output_path.parent / f".{output_path.name}.partial"
        started = time.perf_counter()
        try:
            with pq.ParquetWriter(partial, out_schema) as writer:
                for batch in batches:
                    predict_started = time.perf_counter()
                    scores, labels = self.score_batch(batch)
                    summary.predict_seconds += time.perf_counter() - predict_started
                    columns = [batch.column(f.name) for f in fields]
                    writer.write_table(pa.Table.from_arrays([*columns, pa.array(scores), labels], schema=out_schema))
                    counts = np.bincount(label_indices(scores, manifest.thresholds), minlength=len(LABELS))
                    for label, count in zip(LABELS, counts, strict=True):
                        summary.labels[label] += int(count)
                    summary.rows += batch.num_rows
                    summary.chunks += 1
                    if progress is not None:
                        progress(summary.rows, total)
            os.replace(partial, output_path)
        finally:
            partial.unlink(missing_ok=True)
        summary.seconds = time.perf_counter() - started
        return summary


def _open_input(input_path: Path, output_path: Path, chunk_rows: int) -> pq.ParquetFile:
    if chunk_rows < 1:
        raise BatchScoringError(f"chunk rows must be at least 1, not {chunk_rows}")
    if not input_path.is_file():
        raise BatchScoringError(f"{input_path} is not a file")
    if output_path.resolve() == input_path.resolve():
        raise BatchScoringError("the output would overwrite the input; choose another --output")
    try:
        return pq.ParquetFile(input_path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BatchScoringError(f"{input_path} is not a readable Parquet file: {exc}") from exc


def point_in_time_rows(
    store: FeatureStore,
    feature_service: str,
    features: Sequence[str],
    layout: OfflineLayout,
    requests: pa.RecordBatch,
    id_column: str = ID_COLUMN,
) -> pa.Table:
    """The request rows with the model's features as of each transaction's time (Feast get_historical_features).

    Entity keys and event times come from the offline store's transactions (the same entity rows a training set
    uses); an `event_timestamp` column in the request overrides the time. Ids the offline store lacks are an
    error naming them, not rows scored on missing values.
    """
    import duckdb
    import pandas as pd

    from pipelines.training.dataset import entity_columns

    transactions = layout.transactions_file
    if not transactions.exists():
        raise BatchScoringError(f"{transactions} does not exist: run `fraudserve features backfill` first")
    table = pa.Table.from_batches([requests])
    ids = pa.table({"transaction_id": pc.cast(table.column(id_column), pa.string())})
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("ids", ids)
    keys = con.execute(
        f"SELECT DISTINCT {', '.join(f't.{c}' for c in entity_columns())}, t.event_timestamp "
        f"FROM read_parquet('{transactions}') t SEMI JOIN ids USING (transaction_id)"
    ).df()
    con.close()
    wanted = pd.DataFrame({"transaction_id": ids.column("transaction_id").to_pylist()})
    unknown = sorted(set(wanted["transaction_id"]) - set(keys["transaction_id"]))
    if unknown:
        raise BatchScoringError(
            f"{len(unknown)} transaction ids are not in the offline store ({transactions}): "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}",
            {"unknown": unknown[:100]},
        )
    keys = keys.drop_duplicates("transaction_id")
    entity = wanted.merge(keys, on="transaction_id", how="left")
    if "event_timestamp" in table.column_names:
        entity["event_timestamp"] = pd.to_datetime(table.column("event_timestamp").to_pandas(), utc=True)
    entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"], utc=True)
    entity_rows = entity.drop_duplicates(["transaction_id", "event_timestamp"])
    service = store.get_feature_service(feature_service)
    joined = store.get_historical_features(entity_df=entity_rows, features=service).to_df()
    joined["event_timestamp"] = pd.to_datetime(joined["event_timestamp"], utc=True)
    joined = joined.drop_duplicates(["transaction_id", "event_timestamp"])
    rows = entity[["transaction_id", "event_timestamp"]].merge(
        joined, on=["transaction_id", "event_timestamp"], how="left"
    )
    columns = {name: table.column(name) for name in table.column_names}
    for name in features:
        values = rows[name].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        columns[name] = pa.array(values, pa.float64())
    return pa.table(columns)


def score_parquet(
    registry: ModelRegistry,
    input_path: Path,
    output_path: Path,
    *,
    model: str = "fraud",
    version: int | str = PRODUCTION,
    device: str = "auto",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    id_column: str = ID_COLUMN,
    threads: int = 0,
    progress: Progress | None = None,
) -> BatchSummary:
    """Open the model and score the file in one call (see BatchScorer for the two steps); logs a CPU fallback."""
    scorer = BatchScorer.open(registry, model, version, device=device, threads=threads)
    if scorer.device.fell_back:
        log.warning(scorer.device.describe())
    return scorer.score_parquet(input_path, output_path, chunk_rows=chunk_rows, id_column=id_column, progress=progress)
