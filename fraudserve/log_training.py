"""`fraudserve train --from-logs`: the training set from the score log, for the model a registered version serves.

The features, their order and the feature service are the registered production version's (its manifest); the
vectors are those the API logged for that model; the labels are the offline store's as of the cut-off. After
training, the package's manifest records where its training set came from (`params.training_source`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from core.models.manifest import MANIFEST_FILE, Manifest
from core.registry import ModelRegistry
from core.score_log import log_files
from core.settings import Settings
from pipelines.training.dataset import TrainingSet
from pipelines.training.from_logs import training_set_from_logs

SOURCE = "score_log"


def logged_training_set(
    settings: Settings,
    model: str,
    since: datetime | None = None,
    cutoff: datetime | None = None,
    maturity: timedelta = timedelta(days=10),
) -> TrainingSet:
    from pipelines.label_log import copy_label_stream, label_log_dir

    target = ModelRegistry.at(settings.models_dir, None, None).get(model).manifest
    copy_label_stream(settings)  # the label stream's new labels count too; unreachable: those copied before count
    return training_set_from_logs(
        log_files([settings.score_log_dir]),
        settings.offline.labels_file,
        model,
        target.feature_service,
        target.features,
        cutoff=cutoff,
        maturity=maturity,
        since=since,
        label_log=label_log_dir(settings.home_dir),
    )


def mark_from_logs(package: Path, model: str, training_set: TrainingSet) -> Manifest:
    """Record in the package's manifest that its training set came from the score log."""
    path = package / MANIFEST_FILE
    manifest = Manifest.model_validate_json(path.read_text())
    frame = training_set.frame
    source = {
        "training_source": SOURCE,
        "training_source_model": model,
        "training_source_rows": len(frame),
        "training_source_span": [
            frame["event_timestamp"].min().isoformat(),
            frame["event_timestamp"].max().isoformat(),
        ],
    }
    manifest = manifest.model_copy(update={"params": {**manifest.params, **source}})
    path.write_text(manifest.model_dump_json(indent=2))
    return manifest
