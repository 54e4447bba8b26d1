"""fraudserve: payments fraud scoring on a Feast feature store with a Redis online store."""

__version__ = "0.1.0"
