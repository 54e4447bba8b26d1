"""Model packages from a notebook: a trained LightGBM or XGBoost model object becomes a package (its framework's own
file format and a manifest), typed from its Feast feature service, ready for `fraudserve models register`.

    from fraudserve.models import save_package
    save_package(model, "pkg", feature_service="fraud_v1", thresholds=(0.3, 0.8))   # or validation=frame
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.models.manifest import (
    MANIFEST_FILE,
    Evaluation,
    FeatureField,
    Flavor,
    Manifest,
    Thresholds,
    TrainingWindow,
)
from core.models.reference import reference_of
from core.models.runtime import load_runtime
from core.registry import ModelVersion, RegistrationError
from core.settings import Settings
from pipelines.training.dataset import LABEL

__all__ = ["NativeModel", "native_model", "register_model", "save_package"]


@dataclass(frozen=True)
class NativeModel:
    """A model reduced to what a package holds: its framework, its booster and the features it reads, in order."""

    flavor: Flavor
    booster: Any  # lightgbm.Booster or xgboost.Booster
    features: list[str]

    @property
    def model_file(self) -> str:
        return "model.txt" if self.flavor is Flavor.lightgbm else "model.json"

    def save(self, path: Path) -> None:
        # LightGBM writes its best iteration when there is one (what Booster.predict uses); XGBoost's format
        # follows the suffix (JSON).
        self.booster.save_model(str(path))


def native_model(model: object) -> NativeModel:
    """The booster of a LightGBM or XGBoost model (Booster or scikit-learn wrapper), with its feature names."""
    module = type(model).__module__.split(".")[0]
    if module == "lightgbm":
        import lightgbm

        if isinstance(model, lightgbm.LGBMModel):
            if not getattr(model, "fitted_", False) and not hasattr(model, "booster_"):
                raise RegistrationError(f"the {type(model).__name__} is not fitted: call fit() first")
            model = model.booster_
        if isinstance(model, lightgbm.Booster):
            names = list(model.feature_name())
            _named(names, "LightGBM", "lightgbm.Dataset(frame[features], ...) or fit(frame[features], ...)")
            return NativeModel(Flavor.lightgbm, model, names)
    if module == "xgboost":
        import xgboost

        if isinstance(model, xgboost.XGBModel):
            booster = model.get_booster()
            best = getattr(model, "best_iteration", None)
            if best is not None and best + 1 < booster.num_boosted_rounds():
                booster = booster[: best + 1]  # what the wrapper's predict_proba uses after early stopping
            model = booster
        if isinstance(model, xgboost.Booster):
            names = list(model.feature_names or [])
            _named(names, "XGBoost", "xgboost.DMatrix(frame[features], ...) or fit(frame[features], ...)")
            return NativeModel(Flavor.xgboost, model, names)
    raise RegistrationError(
        f"a {type(model).__module__}.{type(model).__name__} cannot be packaged: give a LightGBM or XGBoost model "
        "(lightgbm.Booster, LGBMClassifier, xgboost.Booster or XGBClassifier)"
    )


def _named(names: list[str], framework: str, fix: str) -> None:
    if not names or all(n in (f"Column_{i}", f"f{i}") for i, n in enumerate(names)):
        raise RegistrationError(
            f"the {framework} model does not name its features (it was trained on a bare array), so what each "
            f"column means is unknown: train it on a frame whose columns are the feature names, e.g. {fix}"
        )


def service_types(feature_service: str, settings: Settings | None = None) -> dict[str, str]:
    """Each feature of a Feast feature service with its value type (int64, float64, bool, string)."""
    from fraudserve.feature_store import open_offline_store
    from pipelines.training.dataset import service_features

    store = open_offline_store(settings or Settings())
    try:
        return {f.name: f.dtype for f in service_features(store, feature_service)}
    except Exception as exc:  # Feast's FeatureServiceNotFoundException
        known = ", ".join(sorted(s.name for s in store.list_feature_services())) or "none"
        raise RegistrationError(
            f"unknown feature service {feature_service!r}; Feast knows: {known} "
            "(run `fraudserve features apply` if it is new)"
        ) from exc


def typed_features(names: Sequence[str], types: dict[str, str], feature_service: str) -> list[FeatureField]:
    """The model's features typed from the service's; every feature the service lacks (or serves as text) named."""
    lacks = [n for n in names if n not in types]
    problems = [f"feature {n!r}: the model reads it, feature service {feature_service} lacks it" for n in lacks]
    problems += [
        f"feature {n!r}: feature service {feature_service} serves it as text, which a tree model cannot read"
        for n in names
        if types.get(n) == "string"
    ]
    if problems:
        raise RegistrationError(f"the model's features do not fit feature service {feature_service}:", problems)
    return [FeatureField(name=n, dtype=types[n]) for n in names]  # type: ignore[arg-type]


def _thresholds(
    thresholds: Thresholds | tuple[float, float] | None, scores: np.ndarray | None, labels: np.ndarray | None
) -> Thresholds:
    from pipelines.training.evaluate import choose_thresholds

    if isinstance(thresholds, Thresholds):
        return thresholds
    if thresholds is not None:
        suspicious, highly = thresholds
        return Thresholds(suspicious=suspicious, highly_suspicious=highly, method="given")
    if scores is None or labels is None:
        raise RegistrationError(
            "no label thresholds: give thresholds=(suspicious, highly_suspicious), or validation=frame (rows with "
            f"the model's features and {LABEL!r}) to choose them as `fraudserve train` does"
        )
    if labels.sum() == 0:
        raise RegistrationError(f"the validation frame holds no fraud ({LABEL} = 1): thresholds cannot be chosen")
    return choose_thresholds(labels, scores)


def _matrix(frame: pd.DataFrame, names: list[str], what: str) -> np.ndarray:
    missing = [n for n in [*names, LABEL] if n not in frame.columns]
    if missing:
        raise RegistrationError(f"the {what} frame lacks columns: {', '.join(missing)}")
    return frame[names].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _window(training: pd.DataFrame, validation: pd.DataFrame | None) -> TrainingWindow | None:
    info = training.attrs.get("fraudserve", {})
    if "event_timestamp" not in training.columns or "label_cutoff" not in info:
        return None
    stamps = pd.to_datetime(training["event_timestamp"], utc=True)
    valid = pd.to_datetime(validation["event_timestamp"], utc=True) if validation is not None else stamps[:0]
    end = max(stamps.max(), valid.max()) if len(valid) else stamps.max()
    return TrainingWindow(
        data_start=min(stamps.min(), valid.min()).to_pydatetime() if len(valid) else stamps.min().to_pydatetime(),
        data_end=end.to_pydatetime(),
        label_cutoff=datetime.fromisoformat(info["label_cutoff"]),
        label_maturity_days=float(info.get("label_maturity_days", 10)),
        train_rows=len(training),
        valid_rows=len(valid),
        test_rows=0,
        train_end=stamps.max().to_pydatetime(),
        valid_end=(valid.max() if len(valid) else stamps.max()).to_pydatetime(),
    )


def save_package(
    model: object,
    path: Path | str,
    *,
    feature_service: str,
    thresholds: Thresholds | tuple[float, float] | None = None,
    validation: pd.DataFrame | None = None,
    training: pd.DataFrame | None = None,
    settings: Settings | None = None,
    types: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Write `model` as a package folder at `path`: the model file in its framework's format and manifest.json.

    The features are the model's own, in its order (any subset of the service's), typed from the feature service;
    one the service lacks is refused by name. Thresholds: given as (suspicious, highly_suspicious), else chosen on
    the `validation` frame (the model's features and `is_fraud`) by `fraudserve train`'s rule, which also gives the
    manifest the held-out metrics. `training` (a `training_frame`) records the training window. `types` skips
    asking Feast (the caller already knows the service's types). Nothing is left at `path` when it is refused."""
    from pipelines.training.evaluate import baseline_rules, baseline_scores, metrics

    native = native_model(model)
    fields = typed_features(native.features, types or service_types(feature_service, settings), feature_service)
    target = Path(path)
    if target.exists() and any(target.iterdir()):
        raise RegistrationError(f"{target} exists and is not empty: choose a new folder for the package")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        native.save(staging / native.model_file)
        runtime = load_runtime(native.flavor, staging / native.model_file, threads=1)
        scores = labels = None
        evaluation = None
        if validation is not None:
            matrix = _matrix(validation, native.features, "validation")
            scores, labels = runtime.predict(matrix), validation[LABEL].to_numpy(dtype=np.int8)
            rules = baseline_rules(native.features)
            evaluation = Evaluation(
                split=f"the validation frame given to save_package ({len(validation):,} rows)",
                model=metrics(labels, scores),
                baseline=metrics(labels, baseline_scores(validation, rules)),
                baseline_rules=[str(r) for r in rules],
            )
        reference = None
        rows = training if training is not None else validation
        if rows is not None:  # the drift reference `fraudserve monitor report` compares served traffic with
            columns = _matrix(rows, native.features, "training" if training is not None else "validation")
            reference = reference_of(
                {n: columns[:, j] for j, n in enumerate(native.features)},
                scores if scores is not None else runtime.predict(columns),
                f"{'training' if training is not None else 'validation'} frame given to save_package",
            )
        manifest = Manifest(
            reference=reference,
            flavor=native.flavor,
            model_file=native.model_file,
            feature_service=feature_service,
            features=fields,
            thresholds=_thresholds(thresholds, scores, labels),
            training=_window(training, validation) if training is not None else None,
            evaluation=evaluation,
            params=dict(extra or {}),
            created_at=datetime.now(UTC),
        )
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def register_model(
    model: object,
    *,
    name: str,
    feature_service: str,
    thresholds: Thresholds | tuple[float, float] | None = None,
    validation: pd.DataFrame | None = None,
    training: pd.DataFrame | None = None,
    settings: Settings | None = None,
) -> ModelVersion:
    """`save_package` into a temporary folder and register it as the next version of `name` (checked against Feast
    as `fraudserve models register` checks it)."""
    from fraudserve.registry import open_registry

    resolved = settings or Settings()
    with tempfile.TemporaryDirectory(prefix="fraudserve-package-") as folder:
        package = Path(folder) / "package"
        save_package(
            model,
            package,
            feature_service=feature_service,
            thresholds=thresholds,
            validation=validation,
            training=training,
            settings=resolved,
        )
        return open_registry(resolved).register(package, name=name, feature_service=feature_service)
