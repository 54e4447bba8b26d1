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

    def _threads(self, rows: np.ndarray) -> int:
        # One row: one thread (LightGBM's thread start-up costs more than the trees); a batch: all cores.
        return 1 if rows.shape[0] <= 1 else self.threads

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(rows, num_threads=self._threads(rows)), dtype=np.float64)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(rows, pred_contrib=True, num_threads=self._threads(rows)))


class XGBoostRuntime:
    """Two copies of the booster: single-row requests on one thread, batches on all cores (or on the GPU)."""

    def __init__(self, path: Path, threads: int = 0, device: str = "cpu") -> None:
        import xgboost

        try:
            self.booster = xgboost.Booster(model_file=str(path))
            self.single = xgboost.Booster(model_file=str(path))
        except xgboost.core.XGBoostError as exc:
            raise ModelLoadError(f"{path.name} is not an XGBoost model file: {str(exc).splitlines()[0]}") from exc
        self.single.set_param({"nthread": 1})
        if threads:
            self.booster.set_param({"nthread": threads})
        if device != "cpu":
            self.booster.set_param({"device": device})
        self.feature_names = list(self.booster.feature_names or [])

    def predict(self, rows: np.ndarray) -> np.ndarray:
        booster = self.single if rows.shape[0] <= 1 else self.booster
        return np.asarray(booster.inplace_predict(rows), dtype=np.float64)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        import xgboost

        matrix = xgboost.DMatrix(rows, feature_names=self.feature_names, missing=np.nan)
        booster = self.single if rows.shape[0] <= 1 else self.booster
        return np.asarray(booster.predict(matrix, pred_contribs=True))


def load_runtime(flavor: Flavor, path: Path, threads: int = 0, device: str = "cpu") -> Runtime:
    """Load a model file with its framework's own loader; ModelLoadError names the file when it is not one.

    `device` is "cpu" or "cuda". On CUDA, XGBoost predicts on the GPU; LightGBM cannot, and stays on the CPU here.
    """
    if flavor is Flavor.lightgbm:
        return LightGBMRuntime(path, threads)
    return XGBoostRuntime(path, threads, device)
