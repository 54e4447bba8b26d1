"""Drift references for model versions whose package has none (trained before packages kept one).

The reference is rebuilt the way `fraudserve train` built it: the training set of the manifest's feature service
from the offline store (`build_training_set`, Feast's point-in-time join, the manifest's label cut-off and
maturity), kept to the manifest's training window; the model's features binned over every row, and the score over
the held-out rows (after `valid_end`), predicted by the version's own model file. With the offline store unchanged
since training, that is the reference training would have kept.

A rebuild costs a Feast historical retrieval, so it is kept: `FRAUDSERVE_HOME/monitoring/references/
<name>-v<version>.json`, written under a temporary name and renamed, and only used while it matches the version's
manifest (`created_at`: versions are immutable, but a registry may be rebuilt under the same numbers). The CLI's
report rebuilds a missing one; the API's gauges only read what is kept (never a Feast retrieval in the server).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

from core.models.manifest import Manifest
from core.models.reference import DriftReference, reference_of

if TYPE_CHECKING:
    from feast import FeatureStore

    from core.settings import OfflineLayout

KEPT_NOTE = "kept in the model package at training time"


class KeptReference(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int
    created_at: str  # the manifest's, which the reference is only valid with
    reference: DriftReference


def cache_dir(home: Path) -> Path:
    return home / "monitoring" / "references"


def _cache_file(root: Path, name: str, version: int) -> Path:
    return root / f"{name}-v{version}.json"


def cached(root: Path, name: str, version: int, manifest: Manifest) -> DriftReference | None:
    """The kept rebuild of `name` `version`, if one matches its manifest."""
    path = _cache_file(root, name, version)
    if not path.exists():
        return None
    kept = KeptReference.model_validate_json(path.read_text())
    return kept.reference if kept.created_at == manifest.created_at.isoformat() else None


def keep(root: Path, name: str, version: int, manifest: Manifest, reference: DriftReference) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = _cache_file(root, name, version)
    kept = KeptReference(name=name, version=version, created_at=manifest.created_at.isoformat(), reference=reference)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(kept.model_dump_json())
    os.replace(temporary, path)
    return path


def rebuild(store: FeatureStore, layout: OfflineLayout, manifest: Manifest, model_file: Path) -> DriftReference:
    """The reference training would have kept, from the offline store over the manifest's training window.

    ValueError (TrainingDataError) when the manifest has no training window or the offline store no rows in it."""
    from core.models.runtime import load_runtime
    from pipelines.training.dataset import LabelPolicy, TrainingDataError, build_training_set

    window = manifest.training
    if window is None:
        raise TrainingDataError(
            f"the manifest of {manifest.name} version {manifest.version} has no training window: no offline rows to "
            "rebuild a drift reference from"
        )
    policy = LabelPolicy(cutoff=window.label_cutoff, maturity=timedelta(days=window.label_maturity_days))
    frame = build_training_set(store, manifest.feature_service, layout, policy).frame
    stamps = frame["event_timestamp"]
    frame = frame[(stamps >= window.data_start) & (stamps <= window.data_end)]
    if frame.empty:
        raise TrainingDataError(
            f"the offline store has no transactions in the training window of {manifest.name} version "
            f"{manifest.version} ({window.data_start:%Y-%m-%d} to {window.data_end:%Y-%m-%d})"
        )
    names = manifest.feature_names
    matrix = frame[names].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    held_out = (frame["event_timestamp"] > window.valid_end).to_numpy()
    scores = load_runtime(manifest.flavor, model_file).predict(matrix[held_out]) if held_out.any() else None
    source = (
        f"rebuilt from the offline store over the training window {window.data_start:%Y-%m-%d %H:%M} to "
        f"{window.data_end:%Y-%m-%d %H:%M} ({len(frame):,} rows)"
    )
    return reference_of({name: matrix[:, j] for j, name in enumerate(names)}, scores, source)


def resolver(
    root: Path, build: Callable[[str, int, Manifest], DriftReference] | None = None
) -> Callable[[str, int, Manifest | None], tuple[DriftReference | None, str]]:
    """A version's reference and a note on where it came from: the package's own; else the kept rebuild; else,
    with `build`, a new rebuild (kept for next time); else why there is none."""

    def resolve(name: str, version: int, manifest: Manifest | None) -> tuple[DriftReference | None, str]:
        if manifest is None:
            return None, f"{name} version {version} is not in the registry: no reference to compare with"
        if manifest.reference is not None:
            return manifest.reference, KEPT_NOTE
        old = f"{name} version {version} was trained before packages kept a drift reference"
        found = cached(root, name, version, manifest)
        if found is not None:
            return found, f"{old}: the reference was {found.source}, kept in {_cache_file(root, name, version)}"
        if build is None:
            return None, f"{old}; run `fraudserve monitor report` once to rebuild it from the offline store"
        try:
            made = build(name, version, manifest)
        except (ValueError, OSError) as exc:
            return None, f"{old}, and it could not be rebuilt from the offline store: {exc}"
        keep(root, name, version, manifest, made)
        return made, f"{old}: the reference was {made.source}"

    return resolve
