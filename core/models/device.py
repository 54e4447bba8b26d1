"""Where models run: `auto` picks CUDA when a GPU and a CUDA-enabled XGBoost are present, else the CPU."""

from __future__ import annotations

import importlib.util
import logging
import shutil

from core.errors import ConfigurationError

log = logging.getLogger("fraudserve.models")


def cuda_available() -> tuple[bool, str]:
    """Whether models can run on a GPU here: an NVIDIA GPU and nvForest (the `gpu` extra)."""
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU (nvidia-smi not found)"
    if importlib.util.find_spec("nvforest") is None:
        return False, "nvForest is not installed (install the `gpu` extra: pip install 'fraudserve[gpu]')"
    return True, "NVIDIA GPU and nvForest found"


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
