"""Loaded models and live swaps: the API's side of the registry.

A `ModelManager` keeps the production (and, when canary or shadow is on, the candidate) version of one model name
loaded. A background task polls the registry's aliases; a new production version is loaded, warmed with a
prediction, and only then swapped in by replacing one reference. Requests hold the reference they started with,
so an old version finishes its requests and no request fails because of a swap. A version that fails to load
leaves the old one serving, and the failure is kept for health checks and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.errors import FraudserveError, ModelNotFound
from core.models.attribution import Explainer, make_explainer
from core.models.manifest import Manifest
from core.models.runtime import Runtime, load_runtime, model_engine
from core.registry import CANDIDATE, PRODUCTION, ModelRegistry
from core.settings import ReasonsMethod
from inference_api.domain.plan import FeaturePlan, UnknownFeatureService, for_model, resolve_plan

if TYPE_CHECKING:
    from feast import FeatureStore

log = logging.getLogger("fraudserve.models")


class ModelNotReady(FraudserveError):
    code = "model_not_ready"
    status = 503


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    manifest: Manifest
    plan: FeaturePlan
    runtime: Runtime
    explainer: Explainer

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.runtime.predict(rows)


@dataclass
class ManagerState:
    production: LoadedModel | None = None
    candidate: LoadedModel | None = None
    last_error: str | None = None
    swaps: int = 0
    failures: int = 0
    # Loaded versions, least recently used first. Production and candidate always stay; of the others (asked for by
    # the generic API, or just swapped out) at most `ModelManager.keep_versions` stay, so memory does not grow with
    # every promotion.
    by_version: OrderedDict[tuple[str, int], LoadedModel] = field(default_factory=OrderedDict)


class ModelManager:
    def __init__(
        self,
        registry: ModelRegistry,
        store: FeatureStore,
        name: str,
        device: str = "cpu",
        keep_candidate: bool = False,
        reasons: ReasonsMethod = ReasonsMethod.path,
        keep_versions: int = 2,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.name = name
        self.device = device
        self.keep_candidate = keep_candidate
        self.reasons = reasons
        self.keep_versions = keep_versions
        # Called once per distinct load failure (with the model name): the API counts them in its metrics.
        self.on_failure = on_failure
        self.state = ManagerState()
        self._refreshing = threading.Lock()  # the poll and a change notice may ask at the same time

    # ------------------------------------------------------------------------------------------------ loading
    def load(self, name: str, version: int) -> LoadedModel:
        """Load, resolve the feature plan and warm one version (cached by name and version: versions never change)."""
        cached = self.state.by_version.get((name, version))
        if cached is not None:
            self.state.by_version.move_to_end((name, version))
            return cached
        model = self.registry.get(name, version)
        problem = self.registry.verify(name, version)  # a changed or half-written version is never served
        if problem is not None:
            raise ModelNotReady(f"{problem}; it is not loaded")
        manifest = model.manifest
        try:
            plan = for_model(resolve_plan(self.store, manifest.feature_service), manifest.feature_names)
        except UnknownFeatureService as exc:
            raise ModelNotReady(
                f"model {name} version {version} is not loaded: {exc}; register a model trained on the current service"
            ) from exc
        runtime = load_runtime(
            manifest.flavor, self.registry.model_path(name, version), device=self.device, engine=model_engine()
        )
        explainer = make_explainer(self.reasons, manifest.flavor, self.registry.model_path(name, version), runtime)
        warm = np.zeros((1, len(manifest.features)))
        runtime.predict(warm)  # first call pays the framework's lazy set-up, not a client's request
        explainer.contributions(warm)
        loaded = LoadedModel(name, version, manifest, plan, runtime, explainer)
        self.state.by_version[(name, version)] = loaded
        self._evict()
        return loaded

    def _evict(self) -> None:
        """Forget the least recently used versions beyond `keep_versions`, never production or candidate.

        Requests in flight keep their own reference, so a forgotten version finishes them and is then freed."""
        serving = {id(self.state.production), id(self.state.candidate)}
        others = [key for key, model in self.state.by_version.items() if id(model) not in serving]
        for key in others[: max(len(others) - self.keep_versions, 0)]:
            del self.state.by_version[key]
            log.info("unloaded model version", extra={"model": key[0], "version": key[1]})

    def refresh(self) -> bool:
        """Follow the registry's aliases; returns whether production changed. Never raises."""
        with self._refreshing:
            return self._refresh()

    def _refresh(self) -> bool:
        changed = False
        try:
            production = self.registry.get(self.name, PRODUCTION)
            current = self.state.production
            if current is None or current.version != production.version:
                loaded = self.load(self.name, production.version)
                self.state.production = loaded  # the swap: one reference, after load and warm-up
                self.state.swaps += 1
                changed = True
                log.info("serving model", extra={"model": self.name, "version": loaded.version})
            if self.keep_candidate:
                self.state.candidate = self._candidate()
            self.state.last_error = None
        except Exception as exc:  # any failure: the polling task must survive it and the old version keep serving
            self.state.failures += 1
            if self.state.last_error != str(exc):  # once per distinct failure, not at every poll
                log.error("model refresh failed; the loaded version keeps serving", extra={"error": str(exc)})
                if self.on_failure is not None:
                    self.on_failure(self.name)
            self.state.last_error = str(exc)
        return changed

    def _candidate(self) -> LoadedModel | None:
        try:
            candidate = self.registry.get(self.name, CANDIDATE)
        except ModelNotFound:
            return None
        return self.load(self.name, candidate.version)

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.refresh)

    # -------------------------------------------------------------------------------------------------- access
    def production(self) -> LoadedModel:
        model = self.state.production
        if model is None:
            detail = f": {self.state.last_error}" if self.state.last_error else ""
            raise ModelNotReady(
                f"no production version of model {self.name!r} is loaded{detail}. Register one with "
                f"`fraudserve models register` (the first version becomes production)"
            )
        return model

    def candidate(self) -> LoadedModel | None:
        return self.state.candidate

    def get(self, name: str, version: int | str | None = None) -> LoadedModel:
        """Any registered version, for the generic per-model API (production when no version is given)."""
        if name == self.name and version is None:
            return self.production()
        model = self.registry.get(name, PRODUCTION if version is None else version)
        return self.load(name, model.version)
