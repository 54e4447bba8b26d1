"""The monitoring report: served scores judged once labels arrive, and drift against the training reference.

Input: the score log (core/score_log.py), the labels known now (the offline store's labels file and the label
stream's labels copied by pipelines/label_log.py: the latest verdict per transaction whose label time has passed) and
each version's manifest (thresholds, drift reference). Output: a
plain dict, the stable `--json` form (`REPORT_SCHEMA`, documented in README "Monitoring"):

- per model version: scores served, label mix, `uncertain` share, roles; quality on the labelled transactions
  (each transaction counted once per version, its latest score): ROC-AUC, PR-AUC (average precision), precision
  and recall at the manifest's thresholds; drift: PSI of the score and of every feature, served rows against the
  reference (`PSI >= 0.2` flagged, worst first);
- the same counts and quality per day, with the day's score PSI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.errors import ModelNotFound
from core.models.manifest import Manifest
from core.models.reference import FLAG, DriftReference, bin_counts, psi, psi_of_counts
from core.registry import ModelRegistry
from core.score_log import SCHEMA, read_file
from pipelines.label_log import read as read_label_log

REPORT_SCHEMA = "fraudserve.monitor.report/1"
UNCERTAIN = "uncertain"
LABELS = ("not_fraud", "suspicious", "highly_suspicious", UNCERTAIN)
# A version's drift reference and a note on where it came from (or why there is none).
References = Callable[[str, int, Manifest | None], tuple[DriftReference | None, str]]


def load_labels(path: Path, now: datetime | None = None, label_log: Path | None = None) -> pd.DataFrame:
    """The verdict in force now per transaction (`transaction_id`, `is_fraud`): the latest label at or before now,
    of the offline labels file at `path` and the label stream's copied labels under `label_log`
    (pipelines/label_log.py); at equal label times a fraud verdict wins, as in training (`labeled_entity_rows`)."""
    frames = []
    if path.exists():
        frames.append(pq.read_table(path, columns=["transaction_id", "is_fraud", "label_timestamp"]).to_pandas())
    if label_log is not None:
        frames.append(read_label_log(label_log))
    if not frames:
        return pd.DataFrame({"transaction_id": pd.Series(dtype=str), "is_fraud": pd.Series(dtype=bool)})
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    moment = pd.Timestamp(now or datetime.now(UTC))
    stamps = pd.to_datetime(table["label_timestamp"], utc=True)
    known = table[stamps <= moment].assign(label_timestamp=stamps[stamps <= moment])
    known = known.astype({"is_fraud": bool})
    latest = known.sort_values(["label_timestamp", "is_fraud"], kind="stable").drop_duplicates(
        "transaction_id", keep="last"
    )
    result: pd.DataFrame = latest[["transaction_id", "is_fraud"]].reset_index(drop=True)
    return result


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def quality(scores: np.ndarray, labels: np.ndarray, manifest: Manifest | None) -> dict[str, Any]:
    """Labelled rows, positives, ROC-AUC and PR-AUC (None unless both classes are present), and precision and
    recall at each of the manifest's thresholds (precision None when nothing is at or above it)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    positives = int(labels.sum())
    both = 0 < positives < len(labels)
    result: dict[str, Any] = {
        "labelled": len(labels),
        "positives": positives,
        "roc_auc": _number(float(roc_auc_score(labels, scores))) if both else None,
        "pr_auc": _number(float(average_precision_score(labels, scores))) if both else None,
        "at_thresholds": {},
    }
    if manifest is not None:
        for name in ("suspicious", "highly_suspicious"):
            threshold = float(getattr(manifest.thresholds, name))
            flagged = scores >= threshold
            hits = int((flagged & labels).sum())
            result["at_thresholds"][name] = {
                "threshold": threshold,
                "flagged": int(flagged.sum()),
                "precision": hits / int(flagged.sum()) if flagged.any() else None,
                "recall": hits / positives if positives else None,
            }
    return result


def _counts(frame: pd.DataFrame) -> dict[str, Any]:
    mix = frame["label"].value_counts()
    return {
        "scores": len(frame),
        "labels": {label: int(mix.get(label, 0)) for label in LABELS},
        "uncertain_share": float(mix.get(UNCERTAIN, 0)) / len(frame) if len(frame) else None,
    }


def _quality_of(frame: pd.DataFrame, labels: pd.DataFrame, manifest: Manifest | None) -> dict[str, Any]:
    scored = frame[frame["transaction_id"].notna()].sort_values("time", kind="stable")
    latest = scored.drop_duplicates("transaction_id", keep="last")
    joined = latest.merge(labels, on="transaction_id", how="inner")
    return quality(joined["score"].to_numpy(dtype=np.float64), joined["is_fraud"].to_numpy(dtype=bool), manifest)


class FeatureBins:
    """Served feature values counted in each reference bin, per model version and feature, one table at a time
    (so a report over millions of logged vectors holds one file's vectors at a time, never all of them)."""

    def __init__(self, reference_of: Callable[[str, int], DriftReference | None]) -> None:
        self.reference_of = reference_of
        self.counts: dict[tuple[str, int], dict[str, list[Any]]] = {}  # feature -> [bin counts, nulls]

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        keys = pd.DataFrame({"model": table.column("model").to_numpy(zero_copy_only=False),
                             "version": table.column("version").to_numpy()})  # fmt: skip
        groups: dict[Any, Any] = keys.groupby(["model", "version"], sort=False).indices
        for (name, version), rows in groups.items():
            reference = self.reference_of(str(name), int(version))
            if reference is None:
                continue
            vectors = table.column("features").take(pa.array(rows)).combine_chunks()
            into = self.counts.setdefault((str(name), int(version)), {})
            for feature, values in feature_columns(vectors).items():
                expected = reference.features.get(feature)
                if expected is None:
                    continue
                counts, nulls = bin_counts(expected, values)
                known = into.get(feature)
                if known is None:
                    into[feature] = [counts, nulls]
                else:
                    known[0] = known[0] + counts
                    known[1] += nulls


def feature_columns(features: pa.Array) -> dict[str, np.ndarray]:
    """Logged vectors as one array per feature name (NaN: null). Vectors of one version all list the same names
    in the same order: then the values are one (rows x features) matrix; otherwise each name is gathered."""
    flat = pc.list_flatten(features)
    if not len(flat):
        return {}
    encoded = pc.dictionary_encode(flat.field("name"))
    names = [str(n) for n in encoded.dictionary.to_pylist()]
    codes = encoded.indices.to_numpy()
    values = flat.field("value").to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = pc.list_value_length(features).to_numpy(zero_copy_only=False)
    width = int(lengths[0])
    if width and (lengths == width).all():
        grid = codes.reshape(-1, width)
        if (grid == grid[0]).all():
            matrix = values.reshape(-1, width)
            return {names[code]: matrix[:, j] for j, code in enumerate(grid[0])}
    return {name: values[codes == k] for k, name in enumerate(names)}


def drift(
    scores: np.ndarray, bins: Mapping[str, list[Any]], reference: DriftReference | None, note: str
) -> dict[str, Any]:
    if reference is None:
        return {"reference": None, "note": note, "score": None, "features": [], "flagged": []}
    rows: list[dict[str, Any]] = []
    for name, (counts, nulls) in bins.items():
        value = psi_of_counts(reference.features[name], counts, nulls)
        if value is None:
            continue
        total = int(counts.sum()) + nulls
        rows.append({"feature": name, "psi": value, "flagged": value >= FLAG, "null_share": nulls / total})
    rows.sort(key=lambda r: -r["psi"])
    score = None if reference.score is None else psi(reference.score, scores)
    return {
        "reference": reference.source,
        "note": note,
        "score": None if score is None else {"psi": score, "flagged": score >= FLAG},
        "features": rows,
        "flagged": [r["feature"] for r in rows if r["flagged"]],
    }


def report_from_files(
    paths: Sequence[Path],
    labels: pd.DataFrame,
    manifest_of: Callable[[str, int], Manifest | None],
    *,
    days: int,
    model: str | None = None,
    now: datetime | None = None,
    references: References | None = None,
) -> dict[str, Any]:
    """The report over log files, read one at a time (their vectors binned, the rest kept). `references`: each
    version's drift reference and its note (default `reference_for`: the package's own only)."""
    manifests: dict[tuple[str, int], Manifest | None] = {}
    resolved: dict[tuple[str, int], tuple[DriftReference | None, str]] = {}

    def manifest(name: str, version: int) -> Manifest | None:
        if (name, version) not in manifests:
            manifests[(name, version)] = manifest_of(name, version)
        return manifests[(name, version)]

    def reference(name: str, version: int, found: Manifest | None) -> tuple[DriftReference | None, str]:
        if (name, version) not in resolved:
            resolved[(name, version)] = (references or reference_for)(name, version, found)
        return resolved[(name, version)]

    bins = FeatureBins(lambda name, version: reference(name, version, manifest(name, version))[0])
    tables = []
    for path in paths:
        table = read_file(path)
        if model is not None:
            table = table.filter(pc.equal(table.column("model"), model))
        bins.add(table)
        tables.append(_kept(table))
    rows = pa.concat_tables(tables) if tables else _kept(SCHEMA.empty_table())
    return build_report(rows, labels, manifest, bins, days=days, model=model, now=now, references=reference)


_KEPT = ("time", "transaction_id", "model", "version", "role", "feature_service", "score", "label")
_REPEATED = ("model", "role", "feature_service", "label")  # few distinct values: kept dictionary-encoded


def _kept(table: pa.Table) -> pa.Table:
    """The columns the report reads beyond the vectors, the repetitive ones dictionary-encoded (10 M rows of them
    stay small)."""
    return pa.table(
        {name: pc.dictionary_encode(table.column(name)) if name in _REPEATED else table.column(name) for name in _KEPT}
    )


def build_report(
    log: pa.Table,
    labels: pd.DataFrame,
    manifest_of: Callable[[str, int], Manifest | None],
    bins: FeatureBins,
    *,
    days: int,
    model: str | None = None,
    now: datetime | None = None,
    references: References | None = None,
) -> dict[str, Any]:
    """The report over `log`'s rows (the days asked for; the vectors already counted in `bins`)."""
    kept = log.select([c for c in log.column_names if c in _KEPT])
    # Transaction ids stay Arrow strings (a tenth of the memory of Python objects at 10 M rows); the day is the
    # number of days since the epoch (formatting 10 M dates costs more than the rest of the report).
    frame = kept.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if t == pa.string() else None)
    frame["day"] = kept.column("time").cast(pa.int64()).to_numpy() // 86_400_000
    if model is not None:
        frame = frame[frame["model"] == model]
    versions = []
    for (name, version), part in frame.groupby(["model", "version"], sort=True, observed=True):
        manifest = manifest_of(str(name), int(version))
        scores = part["score"].to_numpy(dtype=np.float64)
        reference, note = (references or reference_for)(str(name), int(version), manifest)
        entry: dict[str, Any] = {
            "model": str(name),
            "version": int(version),
            "feature_service": str(part["feature_service"].iloc[0]),
            **_counts(part),
            "roles": {str(k): int(v) for k, v in part["role"].value_counts().sort_index().items() if v},
            "quality": _quality_of(part, labels, manifest),
            "drift": drift(scores, bins.counts.get((str(name), int(version)), {}), reference, note),
            "days": [],
        }
        for day, daily in part.groupby("day", sort=True, observed=True):
            score_psi = None
            if reference is not None and reference.score is not None:
                score_psi = psi(reference.score, daily["score"].to_numpy(dtype=np.float64))
            entry["days"].append(
                {"day": _day(int(day)), **_counts(daily), "quality": _quality_of(daily, labels, manifest),
                 "score_psi": score_psi}
            )  # fmt: skip
        versions.append(entry)
    return {
        "schema": REPORT_SCHEMA,
        "generated_at": (now or datetime.now(UTC)).isoformat(),
        "days": days,
        "model": model,
        "rows": len(frame),
        "labels_known": len(labels),
        "psi_flag": FLAG,
        "versions": versions,
    }


def _day(days_since_epoch: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=days_since_epoch)).strftime("%Y-%m-%d")


def reference_for(name: str, version: int, manifest: Manifest | None) -> tuple[DriftReference | None, str]:
    """A version's drift reference and where it came from (or why there is none): the package's own only (the
    rebuilt ones of older packages: pipelines/drift_reference.py `resolver`)."""
    if manifest is None:
        return None, f"{name} version {version} is not in the registry: no reference to compare with"
    if manifest.reference is None:
        return None, (
            f"{name} version {version} was trained before packages kept a drift reference, so its drift is not "
            "measured here; `fraudserve monitor report` rebuilds one from the offline store"
        )
    return manifest.reference, "kept in the model package at training time"


def registry_report(
    registry: ModelRegistry,
    labels_file: Path,
    files: Sequence[Path],
    days: int,
    model: str | None = None,
    now: datetime | None = None,
    label_log: Path | None = None,
    references: References | None = None,
) -> dict[str, Any]:
    """The report over the score log's `files`, each version judged against its manifest in `registry` and the
    labels of `labels_file` and of the label stream's copy in `label_log` known `now` (what `fraudserve monitor
    report` and the console show)."""
    moment = now or datetime.now(UTC)

    def manifest_of(name: str, version: int) -> Manifest | None:
        try:
            return registry.get(name, version).manifest
        except ModelNotFound:
            return None

    labels = load_labels(labels_file, moment, label_log)
    return report_from_files(files, labels, manifest_of, days=days, model=model, now=moment, references=references)
