"""fraudserve's shared core: settings, errors, API keys, model files (manifest, runtimes, device), the model
registry and Redis connections. `pipelines/` and `inference_api/` import it; it imports neither, nor the CLI."""

__version__ = "0.1.0"
