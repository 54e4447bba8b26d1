"""Registration's answers from Feast are kept while Feast's registry and the offline store stay the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.registry.checks import ServiceField
from core.settings import Settings
from fraudserve.service_cache import CachedFeatureServices


class CountingServices:
    opened = 0

    def __init__(self) -> None:
        CountingServices.opened += 1

    def service_names(self) -> list[str]:
        return ["svc"]

    def service_fields(self, name: str) -> list[ServiceField]:
        return [ServiceField("amount", "float64"), ServiceField("n", "int64")]

    def sample_matrix(self, name: str, rows: int) -> np.ndarray:
        return np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)

    def serving_problems(self, name: str) -> list[str]:
        return ["card_features: not servable"]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    resolved = Settings()
    (resolved.home_dir / "feast").mkdir(parents=True)
    (resolved.home_dir / "feast" / "registry.db").write_bytes(b"registry one")
    resolved.offline.root.mkdir(parents=True)
    (resolved.offline.transactions_file).write_bytes(b"rows")
    return resolved


def answers(cached: CachedFeatureServices) -> tuple[object, ...]:
    return (
        cached.service_names(),
        cached.service_fields("svc"),
        cached.serving_problems("svc"),
        cached.sample_matrix("svc", 3).tolist(),
    )


def test_feast_is_opened_once_while_nothing_changes(settings: Settings) -> None:
    CountingServices.opened = 0
    first = answers(CachedFeatureServices(settings, CountingServices))
    again = answers(CachedFeatureServices(settings, CountingServices))
    assert first == again and CountingServices.opened == 1
    assert first[1] == [ServiceField("amount", "float64"), ServiceField("n", "int64")]
    assert first[2] == ["card_features: not servable"]


@pytest.mark.parametrize("change", ["registry", "offline"])
def test_an_apply_or_a_backfill_makes_it_ask_feast_again(settings: Settings, change: str) -> None:
    CountingServices.opened = 0
    answers(CachedFeatureServices(settings, CountingServices))
    if change == "registry":
        (settings.home_dir / "feast" / "registry.db").write_bytes(b"registry two")
    else:
        settings.offline.transactions_file.write_bytes(b"more rows")
    answers(CachedFeatureServices(settings, CountingServices))
    assert CountingServices.opened == 2


def test_without_a_feast_registry_nothing_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "empty"))
    CountingServices.opened = 0
    answers(CachedFeatureServices(Settings(), CountingServices))
    answers(CachedFeatureServices(Settings(), CountingServices))
    assert CountingServices.opened == 2 and not (tmp_path / "empty" / "cache").exists()


class ServableServices(CountingServices):
    def serving_problems(self, name: str) -> list[str]:
        return []


def test_filled_by_the_command_that_has_feast_open_a_registration_opens_nothing(settings: Settings) -> None:
    from core.registry.registry import SMOKE_ROWS
    from fraudserve.service_cache import fill

    CountingServices.opened = 0
    assert fill(settings, ServableServices()) == ["svc"]  # `features apply` or a backfill, with Feast open
    assert CountingServices.opened == 1

    def refuse() -> CountingServices:
        raise AssertionError("a registration after fill() opened Feast")

    later = CachedFeatureServices(settings, refuse)  # the next registration, in a fresh process
    assert later.service_names() == ["svc"] and later.serving_problems("svc") == []
    assert later.service_fields("svc") == ServableServices().service_fields("svc")
    assert (
        later.sample_matrix("svc", SMOKE_ROWS).tolist() == ServableServices().sample_matrix("svc", SMOKE_ROWS).tolist()
    )
    (settings.home_dir / "feast" / "registry.db").write_bytes(b"registry two")  # applied again: asked again
    with pytest.raises(AssertionError, match="opened Feast"):
        CachedFeatureServices(settings, refuse).service_names()
