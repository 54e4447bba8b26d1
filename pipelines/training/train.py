"""Train LightGBM or XGBoost on a training set with a time-based split, early stopping and class weights."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    TrainingWindow,
)
from core.models.reference import reference_of
from core.models.runtime import load_runtime
from pipelines.training.dataset import LABEL, TrainingDataError, TrainingSet
from pipelines.training.evaluate import baseline_rules, baseline_scores, choose_thresholds, metrics

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    flavor: Flavor
    seed: int = 7
    valid_days: float = 5.0
    test_days: float = 5.0
    rounds: int = 800
    early_stopping: int = 100  # validation PR-AUC is noisy with few positives: be patient
    learning_rate: float = 0.05
    threads: int = 0  # 0: all cores


@dataclass(frozen=True)
class TrainResult:
    package: Path
    manifest: Manifest
    seconds: float

    @property
    def beats_baseline(self) -> bool:
        evaluation = self.manifest.evaluation
        assert evaluation is not None
        model, base = evaluation.model.pr_auc, evaluation.baseline.pr_auc
        return model is not None and base is not None and model > base


def split(frame: pd.DataFrame, config: TrainConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train on the oldest rows, validate on the next days, test on the latest days."""
    end = frame["event_timestamp"].max()
    test_start = end - timedelta(days=config.test_days)
    valid_start = test_start - timedelta(days=config.valid_days)
    train = frame[frame["event_timestamp"] <= valid_start]
    valid = frame[(frame["event_timestamp"] > valid_start) & (frame["event_timestamp"] <= test_start)]
    test = frame[frame["event_timestamp"] > test_start]
    for name, part in (("training", train), ("validation", valid), ("test", test)):
        if part[LABEL].sum() == 0:
            raise TrainingDataError(
                f"the {name} days hold no known fraud ({len(part)} rows): train on more days, or change "
                "--valid-days / --test-days / --label-maturity-days"
            )
    return train, valid, test


def _matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    return frame[names].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _class_weight(labels: np.ndarray) -> float:
    positives = float(labels.sum())
    return float(min((len(labels) - positives) / max(positives, 1.0), 100.0))


def _train_lightgbm(
    x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray, names: list[str], config: TrainConfig, out: Path
) -> tuple[str, dict[str, Any]]:
    import lightgbm

    params: dict[str, Any] = {
        "objective": "binary",
        "learning_rate": config.learning_rate,
        "num_leaves": 31,
        "min_data_in_leaf": 40,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "scale_pos_weight": _class_weight(y),
        "metric": "average_precision",
        "seed": config.seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": config.threads,
        "verbose": -1,
    }
    train_set = lightgbm.Dataset(x, y, feature_name=names, free_raw_data=True)
    valid_set = lightgbm.Dataset(vx, vy, reference=train_set)
    booster = lightgbm.train(
        params,
        train_set,
        num_boost_round=config.rounds,
        valid_sets=[valid_set],
        callbacks=[lightgbm.early_stopping(config.early_stopping, verbose=False)],
    )
    model_file = "model.txt"
    booster.save_model(str(out / model_file), num_iteration=booster.best_iteration)
    return model_file, {**params, "best_iteration": booster.best_iteration}


def _train_xgboost(
    x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray, names: list[str], config: TrainConfig, out: Path
) -> tuple[str, dict[str, Any]]:
    import xgboost

    params: dict[str, Any] = {
        "objective": "binary:logistic",
        "eta": config.learning_rate,
        "max_depth": 6,
        "min_child_weight": 5,
        "subsample": 0.8,
        "colsample_bytree": 0.9,
        "lambda": 1.0,
        "scale_pos_weight": _class_weight(y),
        "eval_metric": "aucpr",
        "tree_method": "hist",
        "seed": config.seed,
        "nthread": config.threads,
    }
    train_set = xgboost.DMatrix(x, y, feature_names=names, missing=np.nan)
    valid_set = xgboost.DMatrix(vx, vy, feature_names=names, missing=np.nan)
    booster = xgboost.train(
        params,
        train_set,
        num_boost_round=config.rounds,
        evals=[(valid_set, "valid")],
        early_stopping_rounds=config.early_stopping,
        verbose_eval=False,
    )
    best = booster.best_iteration
    model_file = "model.json"
    booster[: best + 1].save_model(str(out / model_file))
    return model_file, {**params, "best_iteration": best}


def train(training_set: TrainingSet, config: TrainConfig, out: Path, progress: Progress | None = None) -> TrainResult:
    """Train, evaluate on the held-out days against the rules baseline, and write a model package to `out`."""
    report = progress or (lambda message: None)
    started = time.perf_counter()
    names = training_set.feature_names
    not_numeric = [f.name for f in training_set.features if f.dtype == "string"]
    if not_numeric:
        raise TrainingDataError(
            f"feature service {training_set.feature_service} has text features a tree model cannot read: "
            f"{', '.join(not_numeric)}"
        )
    train_rows, valid_rows, test_rows = split(training_set.frame, config)
    out.mkdir(parents=True, exist_ok=True)
    report(f"training {config.flavor.value} on {len(train_rows):,} rows, early stopping on {len(valid_rows):,}")
    x, y = _matrix(train_rows, names), train_rows[LABEL].to_numpy(dtype=np.int8)
    vx, vy = _matrix(valid_rows, names), valid_rows[LABEL].to_numpy(dtype=np.int8)
    trainer = _train_lightgbm if config.flavor is Flavor.lightgbm else _train_xgboost
    model_file, params = trainer(x, y, vx, vy, names, config, out)

    report(f"evaluating on {len(test_rows):,} held-out rows")
    runtime = load_runtime(config.flavor, out / model_file)
    tx, ty = _matrix(test_rows, names), test_rows[LABEL].to_numpy(dtype=np.int8)
    rules = baseline_rules(names)
    evaluation = Evaluation(
        split=f"latest {config.test_days:g} days held out; validation the {config.valid_days:g} days before",
        model=metrics(ty, runtime.predict(tx)),
        baseline=metrics(ty, baseline_scores(test_rows, rules)),
        baseline_rules=[str(r) for r in rules],
    )
    thresholds = choose_thresholds(vy, runtime.predict(vx))
    frame = training_set.frame
    everything = _matrix(frame, names)
    reference = reference_of(
        {name: everything[:, j] for j, name in enumerate(names)}, runtime.predict(tx), "training set (all splits)"
    )
    manifest = Manifest(
        flavor=config.flavor,
        model_file=model_file,
        feature_service=training_set.feature_service,
        features=[FeatureField(name=f.name, dtype=f.dtype) for f in training_set.features],  # type: ignore[arg-type]
        thresholds=thresholds,
        training=TrainingWindow(
            data_start=frame["event_timestamp"].min().to_pydatetime(),
            data_end=frame["event_timestamp"].max().to_pydatetime(),
            label_cutoff=training_set.cutoff,
            label_maturity_days=training_set.maturity.total_seconds() / 86400,
            train_rows=len(train_rows),
            valid_rows=len(valid_rows),
            test_rows=len(test_rows),
            train_end=train_rows["event_timestamp"].max().to_pydatetime(),
            valid_end=valid_rows["event_timestamp"].max().to_pydatetime(),
        ),
        evaluation=evaluation,
        params={**params, "seed": config.seed},
        reference=reference,
        created_at=datetime.now(UTC),
    )
    (out / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2))
    return TrainResult(out, manifest, time.perf_counter() - started)


def describe(manifest: Manifest) -> str:
    """A short report: the model against the baseline on the held-out days."""
    evaluation = manifest.evaluation
    if evaluation is None:
        return "no evaluation"
    lines = [f"held-out: {evaluation.split}"]
    for name in ("roc_auc", "pr_auc", "recall_at_1pct_fpr"):
        model, base = getattr(evaluation.model, name), getattr(evaluation.baseline, name)
        if model is None or base is None:
            continue
        lines.append(f"  {name:<20} model {model:.4f}  baseline {base:.4f}  ({model - base:+.4f})")
    return "\n".join(lines) + "\n" + json.dumps(manifest.thresholds.model_dump())
