"""Model packages (a framework-native model file plus its manifest) and the runtimes that load them."""

from core.models.manifest import (
    Evaluation,
    FeatureField,
    Flavor,
    Manifest,
    Metrics,
    Thresholds,
    TrainingWindow,
)

__all__ = ["Evaluation", "FeatureField", "Flavor", "Manifest", "Metrics", "Thresholds", "TrainingWindow"]
