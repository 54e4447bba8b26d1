"""The drift and quality gauges of /metrics, recomputed from the score log by a background task.

Every `interval_s` a thread (never a request) reads the newest logged scores of the last `DAYS` days (at most
`MAX_ROWS`, from every worker's files), the labels known now (the offline file's, and the label stream's, whose new
labels it copies first unless another process is at it: pipelines/label_log.py) and each version's manifest, runs
the monitoring report (pipelines/monitoring.py) and sets `fraudserve_feature_psi{model,version,feature}`,
`fraudserve_score_psi{model,version}` and `fraudserve_labelled_quality{model,version,metric}` (roc_auc, pr_auc,
labelled, and precision and recall at each threshold). A failed refresh is logged and keeps the last values.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from datetime import UTC, datetime
from typing import Any

from core.errors import ModelNotFound
from core.models.manifest import Manifest
from core.registry import ModelRegistry
from core.score_log import recent_files
from core.settings import Settings
from inference_api.observability import Metrics

log = logging.getLogger("fraudserve.monitoring")
DAYS = 2
MAX_ROWS = 500_000
LABEL_ENTRIES = 50_000


def refresh(
    settings: Settings, registry: ModelRegistry, metrics: Metrics, now: datetime | None = None
) -> dict[str, Any]:
    """Recompute the report over the recent log and set the gauges; returns the report."""
    from pipelines.drift_reference import cache_dir, resolver
    from pipelines.label_log import copy_label_stream, label_log_dir
    from pipelines.monitoring import load_labels, report_from_files

    now = now or datetime.now(UTC)

    def manifest_of(name: str, version: int) -> Manifest | None:
        try:
            return registry.get(name, version).manifest
        except ModelNotFound:
            return None

    files = recent_files([settings.score_log_dir], DAYS, MAX_ROWS, now.date())
    # At most LABEL_ENTRIES stream entries a refresh: a long backlog (the stream holds every transaction too) is
    # caught up over several refreshes rather than in one long read beside the requests.
    stream = copy_label_stream(settings, wait=False, max_entries=LABEL_ENTRIES) if settings.redis else None
    labels = load_labels(settings.offline.labels_file, now, label_log_dir(settings.home_dir))
    references = resolver(cache_dir(settings.home_dir))  # a rebuilt reference only if kept: no Feast retrieval here
    report = report_from_files(files, labels, manifest_of, days=DAYS, now=now, references=references)
    report["label_stream"] = stream
    with warnings.catch_warnings():  # several workers: each sets what it computed; nothing else to clear
        warnings.simplefilter("ignore", UserWarning)
        for gauge in (metrics.feature_psi, metrics.score_psi, metrics.quality):
            gauge.clear()
    for entry in report["versions"]:
        name, number = entry["model"], str(entry["version"])
        for feature in entry["drift"]["features"]:
            metrics.feature_psi.labels(name, number, feature["feature"]).set(feature["psi"])
        if entry["drift"]["score"] is not None:
            metrics.score_psi.labels(name, number).set(entry["drift"]["score"]["psi"])
        quality = entry["quality"]
        metrics.quality.labels(name, number, "labelled").set(quality["labelled"])
        for metric in ("roc_auc", "pr_auc"):
            if quality[metric] is not None:
                metrics.quality.labels(name, number, metric).set(quality[metric])
        for threshold, figures in quality["at_thresholds"].items():
            for metric in ("precision", "recall"):
                if figures[metric] is not None:
                    metrics.quality.labels(name, number, f"{metric}_at_{threshold}").set(figures[metric])
    return report


async def keep_refreshed(settings: Settings, registry: ModelRegistry, metrics: Metrics, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(refresh, settings, registry, metrics)
        except Exception as exc:  # the gauges keep their last values; the API goes on
            log.warning(f"monitoring gauges not refreshed: {exc!r}", extra={"error": str(exc)})
