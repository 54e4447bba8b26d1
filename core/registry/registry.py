"""The model registry: validated, immutable, numbered versions of named models, and aliases that move between them.

    registry = ModelRegistry.from_settings(Settings())
    model = registry.register("packages/fraud_v2-lightgbm", name="fraud", feature_service="fraud_v2")
    registry.promote("fraud", model.version)

The first version of a name becomes `production`; later ones become `candidate` until promoted.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from core.errors import ModelNotFound
from core.models.manifest import MANIFEST_FILE, Manifest
from core.models.runtime import ModelLoadError, load_runtime
from core.registry.checks import (
    RegistrationError,
    ServiceField,
    feature_problems,
    read_package,
    serving_problems,
)
from core.registry.notices import Notices
from core.registry.storage import AliasDoc, LocalStorage, Storage

PRODUCTION = "production"
CANDIDATE = "candidate"
SMOKE_ROWS = 200
# Written with every version: the SHA-256 of each of its files. A file changed, truncated or half-copied on disk
# after registration (a framework may still load a truncated model and score with fewer trees) is then refused.
CHECKSUMS_FILE = "checksums.json"


class FeatureServices(Protocol):
    """What registration needs from the feature store."""

    def service_names(self) -> list[str]: ...

    def service_fields(self, name: str) -> list[ServiceField]: ...

    def sample_matrix(self, name: str, rows: int) -> np.ndarray:
        """Feature rows from the offline store, columns in the service's order."""
        ...


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    manifest: Manifest
    aliases: tuple[str, ...]


class ModelRegistry:
    def __init__(
        self, storage: Storage, services: FeatureServices | None = None, notices: Notices | None = None
    ) -> None:
        self.storage = storage
        self.services = services
        self.notices = notices  # told of every change, so that API instances need not wait for their next poll

    @classmethod
    def at(cls, root: Path, services: FeatureServices | None = None, notices: Notices | None = None) -> ModelRegistry:
        return cls(LocalStorage(root), services, notices)

    def _notify(self, name: str, change: str, version: int) -> None:
        if self.notices is not None:
            self.notices.publish(name, change, version)

    # ------------------------------------------------------------------------------------------------- register
    def register(self, package: Path | str, *, name: str, feature_service: str | None = None) -> ModelVersion:
        """Validate a package folder, store it as the next version of `name`, and set its alias."""
        folder = Path(package)
        manifest, files = read_package(folder)
        if feature_service is not None and feature_service != manifest.feature_service:
            raise RegistrationError(
                f"the package was trained on feature service {manifest.feature_service!r}, "
                f"not {feature_service!r}: register it against the service it was trained on"
            )
        Manifest.model_validate({**manifest.model_dump(), "name": name})  # the name's own rules
        self._check_model(folder, manifest)
        version_manifest = manifest.model_copy(update={"name": name, "registered_at": datetime.now(UTC)})
        # The number is claimed by the storage at write time; readers take it from the folder (see `_version`).
        files = {**files, MANIFEST_FILE: version_manifest.model_dump_json(indent=2).encode()}
        sums = {file: hashlib.sha256(content).hexdigest() for file, content in files.items()}
        files[CHECKSUMS_FILE] = json.dumps(sums, indent=2, sort_keys=True).encode()
        version = self.storage.put_version(name, files)
        doc = self.storage.update_aliases(name, lambda d: _first_or_candidate(d, version))
        self._notify(name, "register", version)
        return self._version(name, version, doc)

    def _check_model(self, folder: Path, manifest: Manifest) -> None:
        try:
            runtime = load_runtime(manifest.flavor, folder / manifest.model_file, threads=1)
        except ModelLoadError as exc:
            raise RegistrationError(f"corrupt model file: {exc}") from exc
        own = runtime.feature_names
        if own and own != manifest.feature_names:
            problems = [
                f"position {i}: the model file says {a!r}, the manifest says {b!r}"
                for i, (a, b) in enumerate(zip(own, manifest.feature_names, strict=False))
                if a != b
            ]
            if len(own) != len(manifest.feature_names):
                problems.append(f"the model file has {len(own)} features, the manifest {len(manifest.features)}")
            raise RegistrationError("the model file and its manifest list different features:", problems)
        if self.services is None:
            return
        known = self.services.service_names()
        if manifest.feature_service not in known:
            raise RegistrationError(
                f"unknown feature service {manifest.feature_service!r}; Feast knows: {', '.join(known) or 'none'} "
                "(run `fraudserve features apply` if it is new)"
            )
        unservable = serving_problems(self.services, manifest.feature_service)
        if unservable:
            raise RegistrationError(
                f"the API cannot serve feature service {manifest.feature_service}, so it refuses models on it:",
                unservable,
            )
        fields = self.services.service_fields(manifest.feature_service)
        problems = feature_problems(manifest.features, fields, manifest.feature_service)
        if problems:
            raise RegistrationError(
                f"the model's features do not match feature service {manifest.feature_service}:", problems
            )
        served = self.services.sample_matrix(manifest.feature_service, SMOKE_ROWS)
        position = {f.name: i for i, f in enumerate(fields)}
        matrix = served[:, [position[n] for n in manifest.feature_names]]  # the model's own order
        scores = runtime.predict(matrix)
        bad = int(np.count_nonzero(~np.isfinite(scores) | (scores < 0) | (scores > 1)))
        if len(scores) == 0 or bad:
            raise RegistrationError(
                f"smoke prediction on {len(matrix)} offline rows of {manifest.feature_service} gave "
                f"{bad} scores that are not finite probabilities"
                if len(scores)
                else f"no offline rows of {manifest.feature_service} to smoke-test the model on: run the backfill"
            )

    # --------------------------------------------------------------------------------------------------- read
    def names(self) -> list[str]:
        return self.storage.names()

    def versions(self, name: str) -> list[ModelVersion]:
        doc = self.storage.aliases(name)
        numbers = self.storage.versions(name)
        if not numbers:
            raise ModelNotFound(name, known=self.names())
        return [self._version(name, n, doc) for n in numbers]

    def get(self, name: str, version_or_alias: int | str = PRODUCTION) -> ModelVersion:
        """A version by number (or its string) or by alias."""
        doc = self.storage.aliases(name)
        numbers = self.storage.versions(name)
        if not numbers:
            raise ModelNotFound(name, known=self.names())
        key = str(version_or_alias)
        if key.isdigit() and int(key) in numbers:
            return self._version(name, int(key), doc)
        target = doc["aliases"].get(key)
        if target is None or target not in numbers:
            raise ModelNotFound(name, version_or_alias)
        return self._version(name, int(target), doc)

    def history(self, name: str) -> list[dict[str, object]]:
        return list(self.storage.aliases(name).get("history", []))

    def model_path(self, name: str, version: int) -> Path:
        """A local path to the version's model file (downloaded to a temporary folder for remote storage)."""
        manifest = self.get(name, version).manifest
        if isinstance(self.storage, LocalStorage):
            return self.storage.path(name, version) / manifest.model_file
        folder = Path(tempfile.mkdtemp(prefix=f"fraudserve-{name}-{version}-"))
        target = folder / manifest.model_file
        target.write_bytes(self.storage.read(name, version, manifest.model_file))
        return target

    def verify(self, name: str, version: int) -> str | None:
        """Why the stored version is not the one registered (a file changed, truncated or missing), or None.

        Versions registered before checksums were written have nothing to compare with and pass."""
        try:
            raw = self.storage.read(name, version, CHECKSUMS_FILE)
        except FileNotFoundError:
            return None
        try:
            sums: dict[str, str] = json.loads(raw)
        except ValueError:
            return f"model {name} version {version}: {CHECKSUMS_FILE} is not valid JSON"
        for file, expected in sorted(sums.items()):
            try:
                actual = hashlib.sha256(self.storage.read(name, version, file)).hexdigest()
            except FileNotFoundError:
                return f"model {name} version {version}: {file} is missing"
            if actual != expected:
                return f"model {name} version {version}: {file} does not match its checksum (changed or truncated)"
        return None

    def _version(self, name: str, version: int, doc: AliasDoc) -> ModelVersion:
        raw = self.storage.read(name, version, MANIFEST_FILE)
        manifest = Manifest.model_validate_json(raw).model_copy(update={"version": version})
        aliases = tuple(sorted(a for a, v in doc["aliases"].items() if v == version))
        return ModelVersion(name, version, manifest, aliases)

    # ------------------------------------------------------------------------------------------------ aliases
    def promote(self, name: str, version: int, alias: str = PRODUCTION) -> ModelVersion:
        """Point `alias` at `version`; promoting the candidate to production clears the candidate alias."""
        if version not in self.storage.versions(name):
            raise ModelNotFound(name, version)

        def change(doc: AliasDoc) -> AliasDoc:
            doc = _move(doc, alias, version)
            if alias == PRODUCTION and doc["aliases"].get(CANDIDATE) == version:
                doc = _move(doc, CANDIDATE, None)
            return doc

        doc = self.storage.update_aliases(name, change)
        self._notify(name, f"promote:{alias}", version)
        return self._version(name, version, doc)

    def rollback(self, name: str) -> ModelVersion:
        """Move `production` back to the version it pointed to before its last move."""
        if not self.storage.versions(name):
            raise ModelNotFound(name, known=self.names())

        def change(doc: AliasDoc) -> AliasDoc:
            current = doc["aliases"].get(PRODUCTION)
            moves = [h for h in doc["history"] if h["alias"] == PRODUCTION and h["to"] == current]
            previous = moves[-1]["from"] if moves else None
            if previous is None:
                raise RegistrationError(f"model {name!r} has no earlier production version to roll back to")
            return _move(doc, PRODUCTION, previous, reason="rollback")

        doc = self.storage.update_aliases(name, change)
        self._notify(name, "rollback", int(doc["aliases"][PRODUCTION]))
        return self._version(name, int(doc["aliases"][PRODUCTION]), doc)


def _move(doc: AliasDoc, alias: str, version: int | None, reason: str = "promote") -> AliasDoc:
    aliases = dict(doc.get("aliases", {}))
    before = aliases.get(alias)
    if version is None:
        aliases.pop(alias, None)
    else:
        aliases[alias] = version
    history = [*doc.get("history", [])]
    history.append(
        {"alias": alias, "from": before, "to": version, "at": datetime.now(UTC).isoformat(), "reason": reason}
    )
    return {"aliases": aliases, "history": history}


def _first_or_candidate(doc: AliasDoc, version: int) -> AliasDoc:
    if PRODUCTION not in doc.get("aliases", {}):
        return _move(doc, PRODUCTION, version, reason="first version")
    return _move(doc, CANDIDATE, version, reason="registered")
