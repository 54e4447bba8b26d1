"""docker-compose.yml passes `docker-compose config -q` (Debian's `docker-compose`, installed by .ci/run) under each
of its profiles: the file's schema, anchors, interpolation and references, checked without pulling an image or
needing a Docker engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    assert found, "docker-compose is missing: install Debian's `docker-compose` package (.ci/run does)"
    return found


def profiles() -> list[str]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    return sorted({profile for service in services.values() for profile in service.get("profiles", [])})


def config(file: Path, profile: str | None) -> subprocess.CompletedProcess[str]:
    selected = ["--profile", profile] if profile else []
    return subprocess.run(
        [docker_compose(), "--project-directory", str(ROOT), "-f", str(file), *selected, "config", "-q"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_every_profile_has_services() -> None:
    assert profiles() == ["jobs", "kafka", "mlflow", "observability"]


@pytest.mark.parametrize("profile", [None, *profiles()])
def test_docker_compose_config_accepts_the_file(profile: str | None) -> None:
    checked = config(COMPOSE, profile)
    assert checked.returncode == 0, f"docker-compose --profile {profile} config -q: {checked.stdout}{checked.stderr}"


def test_docker_compose_config_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: when_it_feels_like_it", 1))
    checked = config(broken, None)
    assert checked.returncode != 0 and "condition" in checked.stderr, checked.stderr
