"""A real MLflow tracking server (`mlflow server`, SQLite store, artifacts served by it) on a free port.

MLflow's server needs pins that clash with the project's (pyarrow < 26, gunicorn < 27), so it runs from its own
virtualenv: FRAUDSERVE_TEST_MLFLOW (the `mlflow` executable), else .ci/mlflow-venv/bin/mlflow, which
`.venv/bin/python -m tests.mlflow_server` creates (what .ci/run does). The project talks to it with mlflow-skinny,
the client of its `[mlflow]` extra."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.embedded_redis import free_port

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".ci" / "mlflow-venv"
MLFLOW_SERVER_PIN = "mlflow==3.17.2"


def executable() -> Path | None:
    configured = os.environ.get("FRAUDSERVE_TEST_MLFLOW")
    candidates = [Path(configured)] if configured else [VENV / "bin" / "mlflow"]
    return next((c for c in candidates if c.is_file()), None)


class MlflowServer:
    def __init__(self, directory: Path, binary: Path) -> None:
        self.directory = directory
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "server.log").open("wb")
        self.process = subprocess.Popen(
            [str(self.binary), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
             "--artifacts-destination", str(self.directory / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.directory / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("mlflow server did not answer /health within 120 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def install() -> Path:
    """Create .ci/mlflow-venv with the MLflow server (once)."""
    binary = VENV / "bin" / "mlflow"
    if not binary.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", MLFLOW_SERVER_PIN], check=True)
    return binary


if __name__ == "__main__":
    print(install())
