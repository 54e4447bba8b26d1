"""A real uvicorn server running the app in a background thread, for tests that need concurrent HTTP clients."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn

from core.embedded_redis import free_port
from core.settings import Settings
from inference_api.app import create_app


class ApiServer:
    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.app = create_app(settings)  # in this process: a test may read app.state.models to explain a wait
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/live", timeout=1).status_code in (200, 401):  # 401: protected
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the API did not start within 60 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
