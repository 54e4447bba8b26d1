"""Loading and running a model file with its framework's own library (LightGBM text, XGBoost JSON/UBJ), or compiled."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from core.models.manifest import Flavor

log = logging.getLogger("fraudserve.models")


class ModelLoadError(ValueError):
    """The model file cannot be loaded by its framework."""


class Runtime(Protocol):
    """A loaded model: fraud probability for each row of a float matrix whose columns follow `feature_names`."""

    @property
    def feature_names(self) -> list[str]: ...

    def predict(self, rows: np.ndarray) -> np.ndarray: ...

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        """Per-feature contributions (log-odds) for each row, plus the bias in the last column."""
        ...


# Up to this many rows a call runs on one thread: starting (and spin-waiting) OpenMP threads costs more than the
# trees, and in the API it steals the cores other requests need. Larger batches use every core.
SINGLE_THREAD_ROWS = 256


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
        return 1 if rows.shape[0] <= SINGLE_THREAD_ROWS else self.threads

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
        booster = self.single if rows.shape[0] <= SINGLE_THREAD_ROWS else self.booster
        return np.asarray(booster.inplace_predict(rows), dtype=np.float64)

    def contributions(self, rows: np.ndarray, approximate: bool = False) -> np.ndarray:
        """TreeSHAP, or with `approximate` XGBoost's decision-path contributions (`approx_contribs`, Saabas)."""
        import xgboost

        matrix = xgboost.DMatrix(rows, feature_names=self.feature_names or None, missing=np.nan)  # None: unnamed
        booster = self.single if rows.shape[0] <= SINGLE_THREAD_ROWS else self.booster
        return np.asarray(booster.predict(matrix, pred_contribs=True, approx_contribs=approximate))


# Below this many rows the CPU framework answers faster than a GPU round trip (bench/results/gpu-*.json: one row
# takes 0.1-0.2 ms on the H100 through nvForest, 28 us on one CPU thread).
GPU_MIN_ROWS = 64


class NvForestRuntime:
    """Predictions by NVIDIA nvForest (GPU), reasons by the framework's own library (TreeSHAP on the CPU).

    nvForest loads LightGBM text and XGBoost JSON/UBJ files as they are. It has no SHAP, so `contributions` uses
    the native booster; that is the per-row part of a request, while batches are where the GPU pays.
    """

    def __init__(self, flavor: Flavor, path: Path, threads: int = 0, device: str = "gpu", precision: str = "single"):
        import nvforest

        self.flavor, self.path, self.threads = flavor, path, threads
        self._native: Runtime | None = None
        model_type = "lightgbm" if flavor is Flavor.lightgbm else "xgboost_json"
        if path.suffix == ".ubj":
            model_type = "xgboost_ubj"
        try:
            self.forest = nvforest.load_model(path, model_type=model_type, device=device, precision=precision)
        except Exception as exc:  # nvForest/Treelite raise their own error types
            raise ModelLoadError(f"{path.name} cannot be loaded by nvForest: {exc}") from exc
        self.dtype = np.float64 if precision == "double" else np.float32

    @property
    def native(self) -> Runtime:
        """The framework's own booster, loaded on first use (a GPU host may lack the CPU framework)."""
        if self._native is None:
            self._native = (
                LightGBMRuntime(self.path, self.threads)
                if self.flavor is Flavor.lightgbm
                else XGBoostRuntime(self.path, self.threads)
            )
        return self._native

    @property
    def feature_names(self) -> list[str]:
        return self.native.feature_names

    def _cpu_available(self) -> bool:
        try:
            self.native  # noqa: B018 - loads it on first use
        except ImportError:
            return False
        return True

    def predict(self, rows: np.ndarray) -> np.ndarray:
        if rows.shape[0] < GPU_MIN_ROWS and self._cpu_available():
            return self.native.predict(rows)  # a GPU call costs more than a small batch on the CPU
        out = self.forest.predict_proba(np.ascontiguousarray(rows, dtype=self.dtype))
        if hasattr(out, "get"):  # nvForest on the GPU answers with a CuPy array
            out = out.get()
        scores = np.asarray(out, dtype=np.float64)
        return scores[:, -1] if scores.ndim == 2 else scores

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        return self.native.contributions(rows)


ENGINES = ("native", "compiled", "auto")


def load_runtime(
    flavor: Flavor,
    path: Path,
    threads: int = 0,
    device: str = "cpu",
    *,
    engine: str = "native",
    cache_dir: Path | None = None,
    compiler: str | None = None,
) -> Runtime:
    """Load a model file with its framework's own loader; ModelLoadError names the file when it is not one.

    `device`: "cpu" runs the native library. "cuda" runs XGBoost on CUDA when this XGBoost is built with it, and
    otherwise (LightGBM always: it cannot predict on a GPU) nvForest on the GPU.

    `engine` (CPU only): "native" predicts with the framework's library; "compiled" with the model compiled to C
    (fraudserve.models.compiled: several times faster, same outputs to 1e-6), falling back to native with a warning
    when it cannot be built here; "auto" is "compiled" where a C compiler or an earlier build is available, and
    native (logged at info) where none is.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if device == "cuda":
        if flavor is Flavor.xgboost and _xgboost_has_cuda():
            return XGBoostRuntime(path, threads, device)
        return NvForestRuntime(flavor, path, threads, device="gpu")
    if engine != "native":
        from core.models.compiled import CompiledRuntime, CompileError, NoCompiler

        try:
            return CompiledRuntime(flavor, path, threads, cache_dir=cache_dir, compiler=compiler)
        except NoCompiler as exc:
            level = logging.INFO if engine == "auto" else logging.WARNING
            log.log(level, "model runs on the native library: %s", exc, extra={"model": str(path), "reason": str(exc)})
        except CompileError as exc:
            log.warning(
                "compiled model unavailable; the native library serves it: %s",
                exc,
                extra={"model": str(path), "reason": str(exc)},
            )
    if flavor is Flavor.lightgbm:
        return LightGBMRuntime(path, threads)
    return XGBoostRuntime(path, threads, device)


def model_engine() -> str:
    """The engine the FRAUDSERVE_MODEL_ENGINE setting asks for (read when a model loads, not at import)."""
    from core.settings import Settings

    return Settings().model_engine


def _xgboost_has_cuda() -> bool:
    try:
        import xgboost

        return bool(xgboost.build_info().get("USE_CUDA"))
    except ImportError:
        return False
