"""The one definition of every feature: entities, windows and aggregations (catalog) and their pure semantics."""

from pipelines.features.catalog import (
    CARD,
    DEVICE,
    ENTITIES,
    IP,
    MERCHANT,
    TRANSACTION,
    WINDOW_FEATURES,
    Agg,
    EntitySpec,
    WindowFeature,
    features_of,
)
from pipelines.features.semantics import Event, Label, evaluate

__all__ = [
    "CARD",
    "DEVICE",
    "ENTITIES",
    "IP",
    "MERCHANT",
    "TRANSACTION",
    "WINDOW_FEATURES",
    "Agg",
    "EntitySpec",
    "Event",
    "Label",
    "WindowFeature",
    "evaluate",
    "features_of",
]
