"""Feast access for the CLI: `feast apply` of feature_repo/ and a FeatureStore bound to the run's settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ConfigurationError
from core.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore


def _feast_executable() -> str:
    beside = Path(sys.executable).parent / "feast"
    found = str(beside) if beside.exists() else shutil.which("feast")
    if found is None:
        raise ConfigurationError("the `feast` command is not installed; reinstall fraudserve (pip install -e .)")
    return found


def apply(settings: Settings, connection: str) -> str:
    """Run `feast apply` in feature_repo/ against this run's stores. Returns Feast's output."""
    repo = settings.feature_repo
    if not (repo / "feature_store.yaml").exists():
        raise ConfigurationError(
            f"{repo} is not a Feast repository (no feature_store.yaml); set FRAUDSERVE_FEATURE_REPO"
        )
    check_repo(settings, connection)
    (settings.home_dir / "feast").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.feast_environment(connection)}
    result = subprocess.run(
        [_feast_executable(), "apply"], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ConfigurationError(f"`feast apply` failed in {repo}:\n{result.stdout}{result.stderr}")
    return result.stdout


def check_repo(settings: Settings, connection: str) -> None:
    """Refuse, before `feast apply`, definitions that fraudserve could not compute or serve (each problem names its
    view), and a repo whose files do not import."""
    from pipelines.features.catalog import CatalogError, parse_repo

    settings.export_feast_environment(connection)
    try:
        catalog = parse_repo(settings.feature_repo)
    except CatalogError as exc:
        raise ConfigurationError(f"{settings.feature_repo}: {exc}") from exc
    except Exception as exc:  # a data engineer's file that does not import: say which and why
        raise ConfigurationError(
            f"{settings.feature_repo}: the Feast repo's files do not load: {type(exc).__name__}: {exc}"
        ) from exc
    if catalog.problems:
        raise ConfigurationError(f"{settings.feature_repo}: {CatalogError(catalog.problems)}; nothing was applied")


def open_store(settings: Settings, connection: str) -> FeatureStore:
    """A FeatureStore on feature_repo/ that sees this run's online store and FRAUDSERVE_HOME."""
    from feast import FeatureStore

    settings.export_feast_environment(connection)
    if not (settings.home_dir / "feast" / "registry.db").exists():
        raise ConfigurationError("the Feast registry is empty: run `fraudserve features apply` first")
    return FeatureStore(repo_path=str(settings.feature_repo))


# Offline-only work (training sets, registration checks) never opens the online store; Feast still wants a
# connection string in its config, so one that would fail loudly is given when no Redis is configured.
OFFLINE_ONLY = "127.0.0.1:1"


def open_offline_store(settings: Settings) -> FeatureStore:
    """A FeatureStore for registry and offline-store work: it does not start or need Redis.

    Without a configured Redis, the placeholder connection is in the environment only while Feast reads its
    config: left there, a later `Settings()` in the same process (a notebook's `open_registry()`) would take it
    for the online store and spend seconds retrying it to send registry notices."""
    if settings.redis:
        return open_store(settings, settings.redis)
    saved = {k: os.environ.get(k) for k in settings.feast_environment(OFFLINE_ONLY)}
    try:
        return open_store(settings, OFFLINE_ONLY)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def feast_project(settings: Settings) -> str:
    """The `project` of feature_repo/feature_store.yaml (the suffix of every online-store key)."""
    import yaml

    config = yaml.safe_load((settings.feature_repo / "feature_store.yaml").read_text())
    return str(config["project"])
