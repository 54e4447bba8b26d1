"""`fraudserve monitor report`'s inputs and renderings: the log, labels and manifests of FRAUDSERVE_HOME, and a
small self-contained HTML page (inline SVG, no scripts, no network) of the report's JSON form."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.models.manifest import Manifest
from core.models.reference import DriftReference
from core.registry import ModelRegistry
from core.score_log import log_files
from core.settings import Settings
from pipelines.drift_reference import cache_dir, rebuild, resolver
from pipelines.label_log import copy_label_stream, label_log_dir
from pipelines.monitoring import registry_report

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore


def report(
    settings: Settings,
    model: str | None = None,
    days: int = 7,
    log_dirs: Sequence[Path] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """The report over the last `days` days of the score log (FRAUDSERVE_HOME's, the folders of feature services'
    own Feast `logging_config`, and any `log_dirs`), with the labels known `now`: the offline store's, and the label
    stream's (its new labels copied first, `copy_label_stream`)."""
    moment = now or datetime.now(UTC)
    stream = copy_label_stream(settings)
    registry = ModelRegistry.at(settings.models_dir, None, None)
    roots = list(dict.fromkeys(p.resolve() for p in [settings.score_log_dir, *feast_log_dirs(settings), *log_dirs]))
    files = log_files(roots, days=days, today=moment.date())
    references = resolver(cache_dir(settings.home_dir), rebuilder(settings, registry))
    data = registry_report(
        registry, settings.offline.labels_file, files, days=days, model=model, now=moment,
        label_log=label_log_dir(settings.home_dir), references=references,
    )  # fmt: skip
    data["label_stream"] = stream
    return data


def logging_dirs(services: Iterable[FeatureService]) -> list[Path]:
    """The score log folders that feature services' Feast `logging_config` name (a `FileLoggingDestination`'s path,
    where the API writes their models' scores: inference_api/domain/score_log.py `feast_sampling`)."""
    found = []
    for service in services:
        config = service.logging_config
        path = getattr(config.destination, "path", None) if config is not None else None
        if path:
            found.append(Path(path))
    return found


def feast_log_dirs(settings: Settings) -> list[Path]:
    """`logging_dirs` of the Feast registry's feature services; none when there is no applied registry."""
    from feast.errors import FeastError

    from core.errors import FraudserveError
    from fraudserve.feature_store import open_offline_store

    try:
        return logging_dirs(open_offline_store(settings).list_feature_services())
    except (FeastError, FraudserveError, OSError):
        return []


def rebuilder(settings: Settings, registry: ModelRegistry) -> Callable[[str, int, Manifest], DriftReference]:
    """Rebuild a version's drift reference from the offline store (pipelines/drift_reference.py); Feast's errors
    (no feature repo applied, the service gone) as ValueError naming the version."""
    stores: list[FeatureStore] = []

    def build(name: str, version: int, manifest: Manifest) -> DriftReference:
        from feast.errors import FeastError

        from core.errors import FraudserveError
        from fraudserve.feature_store import open_offline_store

        try:
            if not stores:
                stores.append(open_offline_store(settings))
            return rebuild(stores[0], settings.offline, manifest, registry.model_path(name, version))
        except (FeastError, FraudserveError) as exc:
            raise ValueError(f"Feast could not give the training set of {manifest.feature_service}: {exc}") from exc

    return build


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _bars(values: list[tuple[str, float]], flag: float | None = None, width: int = 560) -> str:
    """A horizontal bar chart as inline SVG: one labelled bar per value (red at or above `flag`)."""
    if not values:
        return "<p>no data</p>"
    top = max(v for _, v in values) or 1.0
    row = 18
    parts = [f'<svg width="{width}" height="{row * len(values) + 4}" xmlns="http://www.w3.org/2000/svg">']
    for i, (label, value) in enumerate(values):
        length = (width - 260) * value / top
        colour = "#c0392b" if flag is not None and value >= flag else "#2e86c1"
        y = i * row + 2
        parts.append(
            f'<text x="0" y="{y + 12}" font-size="11">{html.escape(label)}</text>'
            f'<rect x="200" y="{y}" width="{length:.1f}" height="{row - 4}" fill="{colour}"/>'
            f'<text x="{204 + length:.1f}" y="{y + 12}" font-size="11">{value:.3g}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _stream_note(data: dict[str, Any]) -> str:
    stream = data.get("label_stream")
    return "" if stream is None else f"<p>label stream: {html.escape(stream['note'])}</p>"


def render_html(data: dict[str, Any]) -> str:
    """The report as one HTML page: per version the counts, quality, daily scores and the PSI of each feature."""
    sections = []
    for version in data["versions"]:
        quality = version["quality"]
        drift = version["drift"]
        thresholds = "".join(
            f"<tr><td>{html.escape(name)} &ge; {t['threshold']:.3f}</td><td>{t['flagged']}</td>"
            f"<td>{_fmt(t['precision'])}</td><td>{_fmt(t['recall'])}</td></tr>"
            for name, t in quality["at_thresholds"].items()
        )
        psi = [(f["feature"], f["psi"]) for f in drift["features"]]
        if drift["score"] is not None:
            psi.insert(0, ("(score)", drift["score"]["psi"]))
        sections.append(
            f"<h2>{html.escape(version['model'])} version {version['version']} "
            f"<small>({html.escape(version['feature_service'])})</small></h2>"
            f"<p>{version['scores']} scores; labels {html.escape(str(version['labels']))}; uncertain share "
            f"{_fmt(version['uncertain_share'])}; roles {html.escape(str(version['roles']))}</p>"
            f"<p>labelled {quality['labelled']} ({quality['positives']} fraud): ROC-AUC {_fmt(quality['roc_auc'])}, "
            f"PR-AUC {_fmt(quality['pr_auc'])}</p>"
            f"<table><tr><th>threshold</th><th>flagged</th><th>precision</th><th>recall</th></tr>{thresholds}</table>"
            "<h3>scores per day</h3>" + _bars([(d["day"], float(d["scores"])) for d in version["days"]]) +
            f"<h3>drift (PSI; reference: {html.escape(str(drift['reference']))})</h3>"
            f"<p>{html.escape(drift['note'])}</p>" + _bars(psi, flag=data["psi_flag"])
        )  # fmt: skip
    body = "".join(sections) or "<p>no scores logged in this window</p>"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>fraudserve monitoring</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"
        f"<h1>fraudserve monitoring</h1><p>last {data['days']} day(s), generated {html.escape(data['generated_at'])};"
        f" {data['rows']} logged scores; {data['labels_known']} transactions labelled; PSI &ge; {data['psi_flag']}"
        f" flagged</p>{_stream_note(data)}{body}</body></html>"
    )
