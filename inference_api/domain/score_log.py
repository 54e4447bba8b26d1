"""The score log's writer: every returned score, with the vector the model saw, to Parquet from a background thread.

A request only appends one block to a bounded list under a lock: its `Score`s as they are (each holds its row of
the model matrix), or OIP's matrix and scores; no per-score tuple, no I/O, no Arrow, no copy. A thread of the
process wakes every `flush_s`, takes the list, builds one Arrow table column by column (a list comprehension per
column over the scores of consecutive requests' blocks, the vectors as one list<float64> column, each model's feature
names once: the `VECTORS` layout of core/score_log.py) and writes one file per day partition (core/score_log.py: a
temporary name, then renamed, so files are complete or absent and each uvicorn worker writes its own). When
`max_rows` scores are already waiting, new ones are dropped and counted, never waited for; a failed write is logged
and its rows counted as dropped. A killed process loses at most the scores of its last flush interval.

Sampling: a feature service's Feast `logging_config` (its `sample_rate`; a `FileLoggingDestination`'s `path` as the
log's root for that service) takes precedence over `FRAUDSERVE_SCORE_LOG_SAMPLE`. The decision is made per
request for all of its scores, so a sampled request is logged whole.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from core.score_log import vectors_table, write_part

if TYPE_CHECKING:
    from feast import FeatureStore

    from inference_api.domain.models import LoadedModel
    from inference_api.domain.scoring import Score, ScoredBatch

log = logging.getLogger("fraudserve.score_log")


@dataclass(frozen=True)
class Sampling:
    rate: float
    root: Path


@dataclass
class _Block:
    """One request's logged scores: its `Score`s (each shadow after its score), or one model's matrix and scores
    (`matrix`, `values`): OIP `infer`'s tensor (labels from the thresholds, role direct), or score:batch's columns
    (`ScoredBatch`: with its transaction ids, labels, freshness and role)."""

    request_id: str | None
    time: float  # epoch seconds
    scores: list[Score]
    model: LoadedModel | None = None
    matrix: np.ndarray | None = None
    values: np.ndarray | None = None
    batch: ScoredBatch | None = None

    def __len__(self) -> int:
        return len(self.scores) if self.values is None else len(self.values)

    def models(self) -> list[LoadedModel]:
        if self.model is not None:
            return [self.model]
        return list({id(s.model): s.model for s in self.scores}.values())


def feast_sampling(store: FeatureStore, default: Sampling) -> Callable[[str], Sampling]:
    """A feature service's sampling from its Feast `logging_config`, or `default` (resolved once per service)."""

    def resolve(feature_service: str) -> Sampling:
        try:
            config = store.get_feature_service(feature_service, allow_cache=True).logging_config
        except Exception:  # an unknown service is the model manager's problem, not the log's
            return default
        if config is None:
            return default
        path = getattr(config.destination, "path", None)
        return Sampling(float(config.sample_rate), Path(path) if path else default.root)

    return resolve


class ScoreLog:
    def __init__(
        self,
        default: Sampling,
        sampling: Callable[[str], Sampling] | None = None,
        max_rows: int = 200_000,
        flush_s: float = 5.0,
        on_drop: Callable[[int], None] | None = None,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        self.default = default
        self.resolve = sampling or (lambda _: default)
        self.max_rows = max_rows
        self.flush_s = flush_s
        self.on_drop = on_drop or (lambda n: None)
        self.on_write = on_write or (lambda n: None)
        self.dropped = 0
        self.written = 0
        self._sampling: dict[str, Sampling] = {}
        self._pending: list[_Block] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sequence = 0

    # ------------------------------------------------------------------------------------------- request side
    def sampling(self, feature_service: str) -> Sampling:
        found = self._sampling.get(feature_service)
        if found is None:
            found = self._sampling[feature_service] = self.resolve(feature_service)
        return found

    def _keep(self, model: LoadedModel) -> bool:
        rate = self.sampling(model.manifest.feature_service).rate
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)

    def record(self, request_id: str | None, outcomes: Sequence[Any]) -> None:
        """Log the scores among `outcomes` (errors are skipped), with their shadow scores. Never raises."""
        try:
            scores = [o for o in outcomes if hasattr(o, "vector")]  # errors are not scores
            if not scores or not self._keep(scores[0].model):
                return
            if any([s.shadow is not None for s in scores]):
                scores = [x for s in scores for x in ((s,) if s.shadow is None else (s, s.shadow))]
            self._add(_Block(request_id, time.time(), scores))
        except Exception as exc:  # the log must never fail a request
            log.warning("score log: a request's scores were not logged", extra={"error": str(exc)})

    def record_matrix(self, request_id: str | None, model: LoadedModel, matrix: np.ndarray, scores: np.ndarray) -> None:
        """Log OIP `infer` scores: the tensor's rows are the vectors; labels from the manifest's thresholds."""
        try:
            if not len(scores) or not self._keep(model):
                return
            self._add(_Block(request_id, time.time(), [], model, matrix, np.asarray(scores, dtype=np.float64)))
        except Exception as exc:
            log.warning("score log: a request's scores were not logged", extra={"error": str(exc)})

    def record_batch(self, request_id: str | None, batch: ScoredBatch) -> None:
        """Log score:batch's columnar scores (`ScoredBatch`: its matrix is the vectors). Never raises."""
        try:
            if not batch.rows or not self._keep(batch.model):
                return
            values = np.asarray(batch.scores, dtype=np.float64)
            self._add(_Block(request_id, time.time(), [], batch.model, batch.matrix, values, batch))
        except Exception as exc:
            log.warning("score log: a request's scores were not logged", extra={"error": str(exc)})

    def _add(self, block: _Block) -> None:
        rows = len(block)
        with self._lock:
            if self._pending_rows + rows > self.max_rows:
                self.dropped += rows
                dropped = True
            else:
                self._pending.append(block)
                self._pending_rows += rows
                dropped = False
        if dropped:
            self.on_drop(rows)

    # -------------------------------------------------------------------------------------------- writer side
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="score-log-writer", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Write what is waiting and stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        else:
            self.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()
        self.flush()

    def _groups(self, blocks: list[_Block]) -> dict[tuple[Path, Any], list[_Block]]:
        """Blocks by log root (their feature service's) and UTC day; a flush's blocks nearly always share both,
        which is checked per block and model, not per score. Otherwise a block whose scores go to several roots is
        split score by score."""
        roots: dict[int, Path] = {}
        for block in blocks:
            for model in block.models():
                if id(model) not in roots:
                    roots[id(model)] = self.sampling(model.manifest.feature_service).root
        first, last = min(b.time for b in blocks), max(b.time for b in blocks)
        if len(set(roots.values())) == 1 and int(first // 86_400) == int(last // 86_400):
            return {(next(iter(roots.values())), datetime.fromtimestamp(first, UTC).date()): blocks}
        groups: dict[tuple[Path, Any], list[_Block]] = {}
        for block in blocks:
            day = datetime.fromtimestamp(block.time, UTC).date()
            if len({roots[id(m)] for m in block.models()}) == 1:
                groups.setdefault((roots[id(block.models()[0])], day), []).append(block)
                continue
            for score in block.scores:
                groups.setdefault((roots[id(score.model)], day), []).append(_Block(block.request_id, block.time,
                                                                                   [score]))  # fmt: skip
        return groups

    def flush(self) -> int:
        """Write the waiting scores now (one file per root and day); returns how many were written."""
        with self._lock:
            blocks, self._pending, rows, self._pending_rows = self._pending, [], self._pending_rows, 0
        if not blocks:
            return 0
        try:
            for (root, day), part in self._groups(blocks).items():
                self._sequence += 1
                write_part(root, day, to_table(part), self._sequence)
        except Exception as exc:
            self.dropped += rows
            self.on_drop(rows)
            log.error("score log: a flush failed; its scores are dropped", extra={"error": str(exc), "rows": rows})
            return 0
        self.written += rows
        self.on_write(rows)
        return rows


class _Columns:
    """The log's columns as they are gathered, block by block (Python lists and NumPy pieces, joined once)."""

    def __init__(self) -> None:
        self.request_ids: list[str | None] = []
        self.counts: list[int] = []
        self.stamps: list[float] = []
        self.transaction_ids: list[str | None] = []
        self.model_codes: list[np.ndarray] = []  # per block: each row's model, as an index of `distinct`
        self.distinct: dict[int, tuple[int, Any]] = {}  # id(model) -> (index, model)
        self.roles: list[str] = []
        self.scores: list[float] = []
        self.labels: list[str | None] = []
        self.freshness: list[float | None] = []
        self.widths: list[np.ndarray] = []  # per block: each row's vector length
        self.values: list[np.ndarray] = []  # the vectors' values, row after row
        self.name_codes: list[np.ndarray] = []  # per block: each row's feature names, as an index of `name_lists`
        self.name_lists: list[str] = []  # JSON lists of feature names
        self._lists_of: dict[tuple[int, int], int] = {}  # (id(model), width) -> index of `name_lists`

    def model_code(self, model: Any) -> int:
        found = self.distinct.get(id(model))
        if found is None:
            found = self.distinct[id(model)] = (len(self.distinct), model)
        return found[0]

    def names(self, model: Any, width: int) -> int:
        """The index of a model's first `width` feature names in `name_lists` (each list added once)."""
        key = (id(model), width)
        known = self._lists_of.get(key)
        if known is None:
            names = list(model.manifest.feature_names[:width]) if width else []
            known = self._lists_of[key] = len(self.name_lists)
            self.name_lists.append(json.dumps(names))
        return known

    def add(self, block: _Block) -> None:
        n = len(block)
        self.request_ids.append(block.request_id)
        self.counts.append(n)
        self.stamps.append(block.time)
        if block.values is not None:  # one model, its rows the vectors: an OIP tensor or score:batch's columns
            model, matrix = block.model, np.asarray(block.matrix, dtype=np.float64)
            scores = block.values.tolist()
            self.model_codes.append(np.full(n, self.model_code(model), dtype=np.int32))
            self.scores += scores
            if (batch := block.batch) is not None:
                ids = batch.ids
                self.transaction_ids += batch.ids if batch.complete else [ids[row] for row in batch.rows]
                self.roles += [batch.role] * n
                self.labels += batch.labels
                self.freshness += batch.freshness
            else:
                label = model.manifest.thresholds.label  # type: ignore[union-attr]
                self.transaction_ids += [None] * n
                self.roles += ["direct"] * n
                self.labels += [label(s) for s in scores]
                self.freshness += [None] * n
            self._vectors(n, model, matrix.reshape(n, -1))
            return
        self._scores(block.scores)

    def add_scores(self, blocks: Sequence[_Block]) -> None:
        """Blocks of `Score`s (`_Block.values` None), one after the other: their rows in one pass. A request logs one
        block of one score or a few, so what is per block (a NumPy call per column piece) is per run here."""
        for block in blocks:
            self.request_ids.append(block.request_id)
            self.counts.append(len(block.scores))
            self.stamps.append(block.time)
        self._scores([score for block in blocks for score in block.scores])

    def _scores(self, scores: list[Score]) -> None:
        n = len(scores)
        if not n:
            return
        self.transaction_ids += [s.transaction_id for s in scores]
        models = [s.model for s in scores]
        self.roles += [s.role for s in scores]
        self.scores += [s.score for s in scores]
        self.labels += [s.label for s in scores]
        self.freshness += [s.feature_freshness_seconds for s in scores]
        vectors = [s.vector for s in scores]
        first = models[0]
        if all([m is first for m in models]):
            self.model_codes.append(np.full(n, self.model_code(first), dtype=np.int32))
            if all([v is not None for v in vectors]):
                self._vectors(n, first, np.stack(vectors))  # type: ignore[arg-type]
                return
        else:
            self.model_codes.append(np.array([self.model_code(m) for m in models], dtype=np.int32))
        for model, vector in zip(models, vectors, strict=True):  # mixed models or missing vectors: row by row
            self._vectors(1, model, None if vector is None else np.asarray(vector, dtype=np.float64)[None, :])

    def _vectors(self, n: int, model: Any, rows: np.ndarray | None) -> None:
        """`n` rows of one model: their vectors (`rows`, n x width; None: no vector) and their names' list."""
        width = 0 if rows is None else rows.shape[1]
        self.widths.append(np.full(n, width, dtype=np.int32))
        self.name_codes.append(np.full(n, self.names(model, width), dtype=np.int32))
        if rows is not None and width:
            self.values.append(rows.astype(np.float64, copy=False).ravel())

    def table(self) -> pa.Table:
        offsets = np.zeros(len(self.scores) + 1, dtype=np.int32)
        np.cumsum(np.concatenate(self.widths), out=offsets[1:])
        flat = np.concatenate(self.values) if self.values else np.empty(0, dtype=np.float64)
        values = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.float64(), mask=np.isnan(flat)))
        block_of_row = pa.array(np.repeat(np.arange(len(self.counts), dtype=np.int32), self.counts))
        stamps = (np.repeat(np.array(self.stamps), self.counts) * 1000).round().astype("datetime64[ms]")
        distinct = [model for _, model in sorted(self.distinct.values(), key=lambda found: found[0])]
        model_of_row = pa.array(np.concatenate(self.model_codes) if self.model_codes else np.empty(0, np.int32))
        columns = {
            "request_id": pa.array(self.request_ids, pa.string()).take(block_of_row),
            "time": pa.array(stamps, pa.timestamp("ms", tz="UTC")),
            "transaction_id": pa.array(self.transaction_ids, pa.string()),
            "model": pa.array([m.name for m in distinct], pa.string()).take(model_of_row),
            "version": pa.array([m.version for m in distinct], pa.int32()).take(model_of_row),
            "role": pa.array(self.roles, pa.string()),
            "feature_service": pa.array([m.manifest.feature_service for m in distinct], pa.string()).take(model_of_row),
            "score": pa.array(self.scores, pa.float64()),
            "label": pa.array(self.labels, pa.string()),
            "feature_freshness_seconds": pa.array(self.freshness, pa.float64()),
        }
        codes = np.concatenate(self.name_codes) if self.name_codes else np.empty(0, np.int32)
        return vectors_table(columns, self.name_lists, codes, values)


def to_table(blocks: Sequence[_Block]) -> pa.Table:
    """Blocks as one table of the log's `VECTORS` layout, built column-wise: the vectors as one list<float64> array
    of all values, each row's feature names as a code into the JSON lists of the block's models (each list stored
    once), per-model columns taken by index."""
    columns = _Columns()
    run: list[_Block] = []  # consecutive blocks of Scores, added at once (`_Columns.add_scores`)
    for block in blocks:
        if block.values is None:
            run.append(block)
            continue
        if run:
            columns.add_scores(run)
            run = []
        columns.add(block)
    if run:
        columns.add_scores(run)
    return columns.table()
