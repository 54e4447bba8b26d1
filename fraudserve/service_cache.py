"""What registration learns from Feast, kept between registrations while Feast's registry and the offline store stay
as they are: the feature services, their typed features, the API's serving problems and the smoke-test rows.

Registration spent most of its time importing Feast, opening the store and asking it for offline rows (about 6 of
8.6 s for a 50-tree model); none of that changes from one registration to the next until `features apply` or a
backfill changes what it was derived from. Each entry is keyed by a digest of Feast's registry file and the sizes
and times of the offline store's files, under FRAUDSERVE_HOME/cache/registration; Feast is only opened on a miss.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core import __version__
from core.registry.checks import ServiceField, serving_problems
from core.registry.registry import FeatureServices
from core.settings import Settings

KEEP = 8  # entries kept: older ones (from earlier registries or backfills) are removed


def store_digest(settings: Settings) -> str | None:
    """A digest of what the checks derive from: Feast's registry file and the offline store's files (None when
    Feast's registry does not exist yet)."""
    registry = settings.home_dir / "feast" / "registry.db"
    try:
        digest = hashlib.sha256(registry.read_bytes())
    except OSError:
        return None
    digest.update(__version__.encode())  # the checks' own code (the API's plan resolution) may change
    root = settings.offline.root
    for path in sorted(root.glob("*.parquet")) if root.is_dir() else []:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


class CachedFeatureServices:
    """The registry's FeatureServices, answered from the cache, or from Feast (opened by `open_services`) on a miss."""

    def __init__(self, settings: Settings, open_services: Callable[[], FeatureServices]) -> None:
        self.settings = settings
        self.open_services = open_services
        self._services: FeatureServices | None = None
        self.digest = store_digest(settings)
        self.folder = settings.home_dir / "cache" / "registration"

    @property
    def services(self) -> FeatureServices:
        if self._services is None:
            self._services = self.open_services()
        return self._services

    def _path(self, what: str) -> Path | None:
        return None if self.digest is None else self.folder / self.digest / what

    def _json(self, what: str, compute: Callable[[], Any]) -> Any:
        path = self._path(f"{what}.json")
        if path is not None and path.exists():
            return json.loads(path.read_text())
        value = compute()
        if path is not None:
            _write(path, json.dumps(value).encode())
        return value

    def service_names(self) -> list[str]:
        def ask() -> list[str]:  # not `self.services.service_names`: that would open Feast before the lookup
            return self.services.service_names()

        return list(self._json("services", ask))

    def service_fields(self, name: str) -> list[ServiceField]:
        raw = self._json(
            f"fields-{_safe(name)}", lambda: [[f.name, f.dtype] for f in self.services.service_fields(name)]
        )
        return [ServiceField(n, t) for n, t in raw]

    def serving_problems(self, name: str) -> list[str]:
        return list(self._json(f"serving-{_safe(name)}", lambda: serving_problems(self.services, name)))

    def sample_matrix(self, name: str, rows: int) -> np.ndarray:
        path = self._path(f"rows-{_safe(name)}-{int(rows)}.npy")
        if path is not None and path.exists():
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        matrix = self.services.sample_matrix(name, rows)
        if path is not None and len(matrix):
            buffer = io.BytesIO()
            np.save(buffer, matrix, allow_pickle=False)
            _write(path, buffer.getvalue())
        return matrix

    def prune(self) -> None:
        """Keep the newest KEEP entries."""
        if not self.folder.is_dir():
            return
        entries = sorted((p for p in self.folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in entries[:-KEEP]:
            for file in old.iterdir():
                file.unlink(missing_ok=True)
            old.rmdir()


def fill(settings: Settings, services: FeatureServices) -> list[str]:
    """Ask `services` (Feast, already open in the command that calls this) everything a registration asks, for every
    feature service, and keep the answers: the next registration, in a fresh process, then finds them all and
    imports no Feast. For the end of `features apply` and of a backfill, the two commands that change what the
    cache is keyed by. The answers are the ones a registration would compute itself (same calls, same keys); a
    service the API cannot serve keeps only that answer, since a registration on it stops there. The services
    filled."""
    from core.registry.registry import SMOKE_ROWS

    cached = CachedFeatureServices(settings, lambda: services)
    if cached.digest is None:  # no Feast registry yet: nothing a registration could use
        return []
    cached.prune()
    names = cached.service_names()
    for name in names:
        if cached.serving_problems(name):
            continue
        cached.service_fields(name)
        cached.sample_matrix(name, SMOKE_ROWS)
    return names


def _safe(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def _write(path: Path, content: bytes) -> None:
    """Written aside and renamed: a reader sees a whole entry or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    aside.write_bytes(content)
    aside.replace(path)
