"""The inference API (FastAPI): score by transaction id, the generic per-model API and KServe v2 (next issues)."""
