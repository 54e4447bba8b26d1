"""Loading and running a model file with its framework's own library (LightGBM text, XGBoost JSON/UBJ)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from fraudserve.models.manifest import Flavor


class ModelLoadError(ValueError):
    """The model file cannot be loaded by its framework."""


class Runtime(Protocol):
    """A loaded model: fraud probability for each row of a float matrix whose columns follow `feature_names`."""

    feature_names: list[str]

    def predict(self, rows: np.ndarray) -> np.ndarray: ...

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        """Per-feature contributions (log-odds) for each row, plus the bias in the last column."""
        ...


class LightGBMRuntime:
    def __init__(self, path: Path, threads: int = 0) -> None:
        import lightgbm

        try:
            self.booster = lightgbm.Booster(model_file=str(path))
        except lightgbm.basic.LightGBMError as exc:
            raise ModelLoadError(f"{path.name} is not a LightGBM model file: {exc}") from exc
        self.feature_names = list(self.booster.feature_name())
        self.threads = threads

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(rows, num_threads=self.threads), dtype=np.float64)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(rows, pred_contrib=True, num_threads=self.threads))


class XGBoostRuntime:
    def __init__(self, path: Path, threads: int = 0) -> None:
        import xgboost

        try:
            self.booster = xgboost.Booster(model_file=str(path))
        except xgboost.core.XGBoostError as exc:
            raise ModelLoadError(f"{path.name} is not an XGBoost model file: {str(exc).splitlines()[0]}") from exc
        if threads:
            self.booster.set_param({"nthread": threads})
        self.feature_names = list(self.booster.feature_names or [])

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.inplace_predict(rows), dtype=np.float64)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        import xgboost

        matrix = xgboost.DMatrix(rows, feature_names=self.feature_names, missing=np.nan)
        return np.asarray(self.booster.predict(matrix, pred_contribs=True))


def load_runtime(flavor: Flavor, path: Path, threads: int = 0) -> Runtime:
    """Load a model file with its framework's own loader; ModelLoadError names the file when it is not one."""
    if flavor is Flavor.lightgbm:
        return LightGBMRuntime(path, threads)
    return XGBoostRuntime(path, threads)
