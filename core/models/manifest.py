"""The model manifest: what a model is, what it reads, how its score becomes a label, and how it was trained."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.models.reference import DriftReference

MANIFEST_FILE = "manifest.json"


class Flavor(StrEnum):
    lightgbm = "lightgbm"
    xgboost = "xgboost"


MODEL_SUFFIXES: dict[Flavor, tuple[str, ...]] = {
    Flavor.lightgbm: (".txt",),
    Flavor.xgboost: (".json", ".ubj"),
}

FeatureType = Literal["int64", "float64", "bool"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureField(_Strict):
    name: str = Field(min_length=1)
    dtype: FeatureType


_LABELS = np.array(["not_fraud", "suspicious", "highly_suspicious"], dtype=object)  # by how many thresholds reached


class Thresholds(_Strict):
    """Scores at or above `suspicious` are suspicious; at or above `highly_suspicious`, highly suspicious."""

    suspicious: float = Field(ge=0.0, le=1.0)
    highly_suspicious: float = Field(ge=0.0, le=1.0)
    method: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.highly_suspicious < self.suspicious:
            raise ValueError(f"highly_suspicious ({self.highly_suspicious}) must be >= suspicious ({self.suspicious})")
        return self

    def label(self, score: float) -> str:
        if score >= self.highly_suspicious:
            return "highly_suspicious"
        if score >= self.suspicious:
            return "suspicious"
        return "not_fraud"

    def labels(self, scores: np.ndarray) -> list[str]:
        """`label` of each score, compared for the whole array at once (a NaN is `not_fraud`, as `label` says). In
        float64, as `label` compares a score: a float32 array would compare with the thresholds rounded to float32."""
        wide = np.asarray(scores, dtype=np.float64)
        level = (wide >= self.suspicious).astype(np.intp) + (wide >= self.highly_suspicious)
        named: list[str] = _LABELS[level].tolist()
        return named


class Metrics(_Strict):
    rows: int
    positives: int
    roc_auc: float | None
    pr_auc: float | None
    recall_at_1pct_fpr: float | None


class Evaluation(_Strict):
    """Held-out figures of the model and of the rules baseline on the same rows."""

    split: str
    model: Metrics
    baseline: Metrics
    baseline_rules: list[str]


class TrainingWindow(_Strict):
    data_start: datetime
    data_end: datetime
    label_cutoff: datetime
    label_maturity_days: float
    train_rows: int
    valid_rows: int
    test_rows: int
    train_end: datetime
    valid_end: datetime


class Manifest(_Strict):
    """manifest.json of a model package; `name` and `version` are set by the registry at registration."""

    schema_version: Literal[1] = 1
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: int | None = Field(default=None, ge=1)
    flavor: Flavor
    model_file: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    feature_service: str
    features: list[FeatureField] = Field(min_length=1)
    thresholds: Thresholds
    training: TrainingWindow | None = None
    evaluation: Evaluation | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Training distributions for drift (core/models/reference.py); packages trained before it have none.
    reference: DriftReference | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    registered_at: datetime | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if not self.model_file.endswith(MODEL_SUFFIXES[self.flavor]):
            raise ValueError(
                f"model_file {self.model_file!r} does not fit flavor {self.flavor.value}: "
                f"expected a name ending in {' or '.join(MODEL_SUFFIXES[self.flavor])}"
            )
        names = self.feature_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"features listed twice: {', '.join(duplicates)}")
        return self
