"""The score log's writer: every returned score, with the vector the model saw, to Parquet from a background thread.

A request only appends references (the `Score`, which holds its row of the model matrix) to a bounded list under
a lock: no I/O, no Arrow, no copy. A thread of the process wakes every `flush_s`, takes the list, builds one Arrow
table and writes one file per day partition (core/score_log.py: a temporary name, then renamed, so files are
complete or absent and each uvicorn worker writes its own). When `max_rows` scores are already waiting, new ones
are dropped and counted, never waited for; a failed write is logged and its rows counted as dropped. A killed
process loses at most the scores of its last flush interval.

Sampling: a feature service's Feast `logging_config` (its `sample_rate`; a `FileLoggingDestination`'s `path` as the
log's root for that service) takes precedence over `FRAUDSERVE_SCORE_LOG_SAMPLE`. The decision is made per
request for all of its scores, so a sampled request is logged whole.
"""

from __future__ import annotations

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

from core.score_log import FEATURE, SCHEMA, write_part

if TYPE_CHECKING:
    from feast import FeatureStore

    from inference_api.domain.models import LoadedModel
    from inference_api.domain.scoring import Score

log = logging.getLogger("fraudserve.score_log")


@dataclass(frozen=True)
class Sampling:
    rate: float
    root: Path


# (request id, epoch seconds, transaction id, model, role, score, label, freshness, vector)
_Row = tuple[str | None, float, str | None, "LoadedModel", str, float, str | None, float | None, np.ndarray | None]


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
        self._pending: list[_Row] = []
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
            rows: list[_Row] = []
            now = time.time()
            for score in outcomes:
                if not hasattr(score, "vector"):
                    continue  # an error, not a score
                if not rows and not self._keep(score.model):
                    return
                rows.append(self._row(request_id, now, score))
                if score.shadow is not None:
                    rows.append(self._row(request_id, now, score.shadow))
            self._add(rows)
        except Exception as exc:  # the log must never fail a request
            log.warning("score log: a request's scores were not logged", extra={"error": str(exc)})

    @staticmethod
    def _row(request_id: str | None, now: float, score: Score) -> _Row:
        return (request_id, now, score.transaction_id, score.model, score.role, score.score, score.label,
                score.feature_freshness_seconds, score.vector)  # fmt: skip

    def record_matrix(self, request_id: str | None, model: LoadedModel, matrix: np.ndarray, scores: np.ndarray) -> None:
        """Log OIP `infer` scores: the tensor's rows are the vectors; labels from the manifest's thresholds."""
        try:
            if not len(scores) or not self._keep(model):
                return
            now = time.time()
            label = model.manifest.thresholds.label
            self._add(
                [(request_id, now, None, model, "direct", float(s), label(float(s)), None, matrix[i])
                 for i, s in enumerate(scores)]
            )  # fmt: skip
        except Exception as exc:
            log.warning("score log: a request's scores were not logged", extra={"error": str(exc)})

    def _add(self, rows: list[_Row]) -> None:
        if not rows:
            return
        with self._lock:
            if len(self._pending) + len(rows) > self.max_rows:
                self.dropped += len(rows)
                dropped = True
            else:
                self._pending.extend(rows)
                dropped = False
        if dropped:
            self.on_drop(len(rows))

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

    def _groups(self, rows: list[_Row]) -> dict[tuple[Path, Any], list[_Row]]:
        """Rows by log root (their feature service's) and UTC day; a flush's rows nearly always share both, which is
        checked without a per-row date."""
        roots: dict[int, Path] = {}
        for row in rows:
            if id(row[3]) not in roots:
                roots[id(row[3])] = self.sampling(row[3].manifest.feature_service).root
        first, last = min(row[1] for row in rows), max(row[1] for row in rows)
        if len(set(roots.values())) == 1 and int(first // 86_400) == int(last // 86_400):
            return {(next(iter(roots.values())), datetime.fromtimestamp(first, UTC).date()): rows}
        groups: dict[tuple[Path, Any], list[_Row]] = {}
        for row in rows:
            groups.setdefault((roots[id(row[3])], datetime.fromtimestamp(row[1], UTC).date()), []).append(row)
        return groups

    def flush(self) -> int:
        """Write the waiting scores now (one file per root and day); returns how many were written."""
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return 0
        try:
            for (root, day), part in self._groups(rows).items():
                self._sequence += 1
                write_part(root, day, to_table(part), self._sequence)
        except Exception as exc:
            self.dropped += len(rows)
            self.on_drop(len(rows))
            log.error("score log: a flush failed; its scores are dropped", extra={"error": str(exc), "rows": len(rows)})
            return 0
        self.written += len(rows)
        self.on_write(len(rows))
        return len(rows)


def to_table(rows: Sequence[_Row]) -> pa.Table:
    """Rows as a table of the log's schema; the vectors flattened column-wise (one Arrow array for all values, the
    names taken from one dictionary of every model's feature names)."""
    dictionary: list[str] = []
    codes_of: dict[int, np.ndarray] = {}
    codes: list[np.ndarray] = []
    values: list[np.ndarray] = []
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    for i, row in enumerate(rows):
        model, vector = row[3], row[8]
        width = 0 if vector is None else len(vector)
        if width:
            known = codes_of.get(id(model))
            if known is None:
                names = model.manifest.feature_names
                known = codes_of[id(model)] = np.arange(len(dictionary), len(dictionary) + len(names), dtype=np.int32)
                dictionary.extend(names)
            codes.append(known[:width])
            values.append(vector)  # type: ignore[arg-type]
        offsets[i + 1] = offsets[i] + width
    flat = np.concatenate(values).astype(np.float64, copy=False) if values else np.empty(0, dtype=np.float64)
    name_codes = np.concatenate(codes) if codes else np.empty(0, dtype=np.int32)
    features = pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.StructArray.from_arrays(
            [pa.array(dictionary, pa.string()).take(pa.array(name_codes)),
             pa.array(flat, pa.float64(), mask=np.isnan(flat))], fields=list(FEATURE),
        ),
    )  # fmt: skip
    request_ids, stamps, transaction_ids, models, roles, scores, labels, freshness, _ = zip(*rows, strict=True)
    columns = {
        "request_id": pa.array(request_ids, pa.string()),
        "time": pa.array((np.array(stamps) * 1000).round().astype("datetime64[ms]"), pa.timestamp("ms", tz="UTC")),
        "transaction_id": pa.array(transaction_ids, pa.string()),
        "model": pa.array([m.name for m in models], pa.string()),
        "version": pa.array([m.version for m in models], pa.int32()),
        "role": pa.array(roles, pa.string()),
        "feature_service": pa.array([m.manifest.feature_service for m in models], pa.string()),
        "score": pa.array(scores, pa.float64()),
        "label": pa.array(labels, pa.string()),
        "feature_freshness_seconds": pa.array(freshness, pa.float64()),
        "features": features,
    }
    return pa.Table.from_pydict(columns, schema=SCHEMA)
