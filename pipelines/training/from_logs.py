"""A training set from the score log: the vectors the API actually served, joined to the labels known at a cut-off.

Each transaction counts once, with the first vector a version of the model scored it with (what the model saw when
it decided; `production`, `canary` and `direct` rows, shadow rows too when nothing else scored it), and only rows
whose vector lists the target's features in the target's order (other feature services are left out and counted).
Labels: the verdict in force at the cut-off (the latest label at or before it; a tie goes to fraud, as in the Feast
path); transactions younger than the maturity period at the cut-off are left out rather than counted as genuine.
The event time is the time of the score. The result is a `TrainingSet` like the Feast path's, so the same split,
training, evaluation and registration checks apply.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.models.manifest import FeatureField
from core.score_log import read_file
from pipelines.training.dataset import LABEL, ServiceFeature, TrainingDataError, TrainingSet

MIN_LABELLED_ROWS = 500
MIN_FRAUD_ROWS = 20
_ROLE_ORDER = {"production": 0, "canary": 0, "direct": 0, "shadow": 1}


def training_set_from_logs(
    files: Sequence[Path],
    labels_file: Path,
    model: str,
    feature_service: str,
    features: Sequence[FeatureField],
    cutoff: datetime | None = None,
    maturity: timedelta = timedelta(days=10),
    since: datetime | None = None,
    label_log: Path | None = None,
) -> TrainingSet:
    started = time.perf_counter()
    names = [f.name for f in features]
    width = len(names)
    frames: list[pd.DataFrame] = []
    for path in files:
        table = read_file(path)  # a part compacted since it was listed is read from the compacted file
        table = table.filter(
            pc.and_(pc.equal(table.column("model"), model), pc.equal(table.column("feature_service"), feature_service))
        )
        if since is not None:
            first = pa.scalar(since, table.schema.field("time").type)
            table = table.filter(pc.greater_equal(table.column("time"), first))
        table = table.filter(pc.equal(pc.list_value_length(table.column("features")), width))
        if not table.num_rows:
            continue
        flat = pc.list_flatten(table.column("features").combine_chunks())
        listed = flat.field("name").to_numpy(zero_copy_only=False).reshape(-1, width)
        same = (listed == np.array(names, dtype=object)).all(axis=1)
        values = flat.field("value").to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, width)[same]
        frame = pd.DataFrame(values, columns=names)
        frame.insert(0, "transaction_id", np.asarray(table.column("transaction_id").to_pylist(), dtype=object)[same])
        frame.insert(1, "event_timestamp", table.column("time").to_pandas().to_numpy()[same])
        frame.insert(2, "_role", np.asarray(table.column("role").to_pylist(), dtype=object)[same])
        frames.append(frame)
    if not frames:
        raise TrainingDataError(
            f"the score log holds no vector of model {model!r} on feature service {feature_service!r} with its "
            f"{width} features{' since ' + since.isoformat() if since else ''}: serve it for a while first"
        )
    logged = pd.concat(frames, ignore_index=True)
    logged = logged[logged["transaction_id"].notna()]
    logged["event_timestamp"] = pd.to_datetime(logged["event_timestamp"], utc=True)
    logged["_order"] = logged["_role"].map(_ROLE_ORDER).fillna(1)
    logged = logged.sort_values(["_order", "event_timestamp", "transaction_id"], kind="stable")
    logged = logged.drop_duplicates("transaction_id", keep="first").drop(columns=["_role", "_order"])

    verdicts = _verdicts(labels_file, label_log)
    if cutoff is None:
        moment = max(pd.Timestamp(logged["event_timestamp"].max()), pd.Timestamp(verdicts["label_timestamp"].max()))
    else:
        moment = pd.Timestamp(cutoff).tz_convert(UTC)
    known = verdicts[verdicts["label_timestamp"] <= moment].sort_values(["label_timestamp", "is_fraud"])
    latest = known.drop_duplicates("transaction_id", keep="last")[["transaction_id", "is_fraud"]]
    mature = logged[logged["event_timestamp"] <= moment - maturity]
    frame = mature.merge(latest.rename(columns={"is_fraud": "_verdict"}), on="transaction_id", how="left")
    frame[LABEL] = frame["_verdict"].fillna(False).astype(bool)
    frame = frame.drop(columns=["_verdict"])
    labelled = int(frame["transaction_id"].isin(latest["transaction_id"]).sum())
    fraud = int(frame[LABEL].sum())
    if labelled < MIN_LABELLED_ROWS or fraud < MIN_FRAUD_ROWS:
        raise TrainingDataError(
            f"too few labelled rows in the score log to train on: {labelled:,} logged transactions of model "
            f"{model!r} older than {maturity.days} days at the cut-off {moment:%Y-%m-%d %H:%M} have a label "
            f"({fraud:,} fraud); at least {MIN_LABELLED_ROWS:,} labelled and {MIN_FRAUD_ROWS} fraud are needed. "
            "Serve longer, wait for labels, or train from Feast (--feature-service without --from-logs)"
        )
    frame = frame.sort_values(["event_timestamp", "transaction_id"], kind="stable").reset_index(drop=True)
    frame = frame[["transaction_id", "event_timestamp", LABEL, *names]]
    return TrainingSet(
        frame=frame,
        features=[ServiceFeature(f.name, f.dtype) for f in features],
        feature_service=feature_service,
        cutoff=moment.to_pydatetime(),
        maturity=maturity,
        seconds=time.perf_counter() - started,
    )


def _verdicts(path: Path, label_log: Path | None = None) -> pd.DataFrame:
    """Every label with its time: the offline labels file's, and the label stream's copied ones under `label_log`
    (pipelines/label_log.py)."""
    from pipelines.label_log import read as read_label_log

    if not path.exists():
        raise TrainingDataError(f"{path} does not exist: the labels file is needed to train from the score log")
    table: pd.DataFrame = pq.read_table(path, columns=["transaction_id", "is_fraud", "label_timestamp"]).to_pandas()
    if label_log is not None:
        streamed = read_label_log(label_log)
        if len(streamed):
            table = pd.concat([table, streamed], ignore_index=True)
    table["label_timestamp"] = pd.to_datetime(table["label_timestamp"], utc=True)
    table["is_fraud"] = table["is_fraud"].astype(bool)
    return table
