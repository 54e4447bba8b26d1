"""fraudserve: payments fraud scoring on a Feast feature store with a Redis online store (the CLI and the Python
entry points for notebooks: `fraudserve.registry.open_registry`)."""

from core import __version__

__all__ = ["__version__"]
