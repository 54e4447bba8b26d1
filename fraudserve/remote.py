"""The model registry of a running API, over HTTP, for a notebook or a CLI on another machine.

`RemoteRegistry(url, key)` registers a package folder by sending it as a `.tar.gz` to
`POST /v1/admin/models/{name}/versions` (the API runs the same checks as a local registration and answers with the
new version), and lists, shows and promotes through the other admin routes. The key needs the `admin` scope; it goes
in the Authorization header, never in a URL.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import httpx

from core.errors import FraudserveError
from core.registry.checks import read_package


class RemoteError(FraudserveError):
    """The API refused a request; code, message and details are the API's own."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details)
        self.status = status
        self.code = code


def package_archive(folder: Path) -> bytes:
    """A package folder as a gzipped tar of its files (checked locally first: a manifest and the model file)."""
    read_package(folder)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.is_symlink():
                archive.add(path, arcname=path.name, recursive=False)
    return out.getvalue()


class RemoteRegistry:
    def __init__(self, url: str, key: str | None = None, timeout_s: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise FraudserveError(f"cannot reach the API at {self.client.base_url}: {exc}") from exc
        if response.is_success:
            return response.json()
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": "http_error", "message": response.text[:500] or response.reason_phrase}
        raise RemoteError(response.status_code, error.get("code", "http_error"), error["message"], error.get("details"))

    def register(self, package: Path | str, *, name: str, feature_service: str | None = None) -> dict[str, Any]:
        """Register a package folder as the next version of `name`; the new version as the API describes it."""
        params = {"feature_service": feature_service} if feature_service else {}
        body = package_archive(Path(package))
        headers = {"Content-Type": "application/gzip"}
        result: dict[str, Any] = self._call(
            "POST", f"/v1/admin/models/{name}/versions", content=body, params=params, headers=headers
        )
        return result

    def names(self) -> list[str]:
        return sorted(self._call("GET", "/v1/admin/models")["models"])

    def show(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/admin/models/{name}")
        return result

    def promote(self, name: str, version: int, alias: str = "production") -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", f"/v1/admin/models/{name}/promote", json={"version": version, "alias": alias}
        )
        return result

    def close(self) -> None:
        self.client.close()
