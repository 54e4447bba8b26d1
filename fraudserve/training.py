"""Training sets for notebooks: a Feast feature service's point-in-time features with labels, as `fraudserve train`
builds them.

    from fraudserve.training import training_frame
    frame = training_frame("fraud_v1")
    features = list(frame.attrs["fraudserve"]["features"])  # the service's, in its order
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

from core.settings import Settings
from pipelines.training.dataset import (
    CHUNK_ROWS,
    LABEL,
    LabelPolicy,
    TrainingDataError,
    build_training_set,
    service_join_keys,
)

__all__ = ["LABEL", "TrainingDataError", "training_frame"]


def training_frame(
    feature_service: str,
    *,
    label_cutoff: datetime | None = None,
    label_maturity_days: float = 10,
    settings: Settings | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> pd.DataFrame:
    """One row per transaction whose verdict is known and mature at the cut-off (SPEC's "From a notebook").

    Columns: `transaction_id`, `event_timestamp`, the service's entity join keys, its features in the service's
    order (point in time, through Feast's `get_historical_features`, in chunks), and `is_fraud` (0/1). The label
    rule is `fraudserve train`'s: verdicts known at `label_cutoff` (default: the offline store's latest event or
    label), transactions younger than `label_maturity_days` at the cut-off left out, no fraud verdict = genuine.
    `frame.attrs["fraudserve"]` keeps the feature service, the cut-off, the maturity and the feature types."""
    from fraudserve.feature_store import open_offline_store

    resolved = settings or Settings()
    store = open_offline_store(resolved)
    policy = LabelPolicy(cutoff=label_cutoff, maturity=timedelta(days=label_maturity_days))
    built = build_training_set(store, feature_service, resolved.offline, policy, chunk_rows=chunk_rows)
    keys = service_join_keys(store, feature_service)
    source = built.frame
    id_column = source.columns[0]  # the transaction view's join key (transaction_id)
    keys = [k for k in keys if k != id_column]
    frame = source[[id_column, "event_timestamp", *keys, *built.feature_names]].copy()
    frame[LABEL] = source[LABEL].astype("int8")
    frame.attrs["fraudserve"] = {
        "feature_service": feature_service,
        "label_cutoff": built.cutoff.isoformat(),
        "label_maturity_days": label_maturity_days,
        "features": {f.name: f.dtype for f in built.features},
        "keys": [id_column, *keys],
    }
    return frame
