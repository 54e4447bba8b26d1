"""Where models run: `auto` picks CUDA when a GPU and a CUDA-enabled XGBoost are present, else the CPU."""

from __future__ import annotations

import logging
import shutil

from fraudserve.errors import ConfigurationError

log = logging.getLogger("fraudserve.models")


def cuda_available() -> tuple[bool, str]:
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU (nvidia-smi not found)"
    try:
        import xgboost

        if not xgboost.build_info().get("USE_CUDA"):
            return False, "this XGBoost is built without CUDA (install the `gpu` extra: pip install 'fraudserve[gpu]')"
    except ImportError:
        return False, "XGBoost is not installed"
    return True, "CUDA GPU and CUDA-enabled XGBoost found"


def resolve_device(requested: str) -> str:
    """The device models run on for a setting of auto, cpu or cuda; cuda without a GPU is a configuration error."""
    if requested == "cpu":
        return "cpu"
    ok, why = cuda_available()
    if requested == "cuda" and not ok:
        raise ConfigurationError(f"FRAUDSERVE_DEVICE=cuda but {why}; set FRAUDSERVE_DEVICE=cpu or auto")
    if not ok:
        log.info("models run on the CPU", extra={"reason": why})
    return "cuda" if ok else "cpu"
