"""Registration refuses bad packages with a message naming each offending feature; aliases move as SPEC says."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import ModelNotFound
from core.models.manifest import MANIFEST_FILE, Flavor
from core.registry.checks import ServiceField
from core.settings import OfflineLayout
from fraudserve.registry import CANDIDATE, PRODUCTION, ModelRegistry, RegistrationError
from tests.model_packages import make_package

SERVICE = [("amount", "float64"), ("card_txn_count_1h", "int64"), ("merchant_fraud_rate_30d", "float64")]


class FakeServices:
    """An in-memory feature store: one service `svc` with SERVICE's features (unit tests only)."""

    def __init__(self, fields: list[tuple[str, str]] | None = None) -> None:
        self.fields = [ServiceField(n, t) for n, t in (fields or SERVICE)]

    def service_names(self) -> list[str]:
        return ["other", "svc"]

    def service_fields(self, name: str) -> list[ServiceField]:
        return self.fields

    def sample_matrix(self, name: str, rows: int) -> np.ndarray:
        return np.random.default_rng(1).normal(size=(rows, len(self.fields)))


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry.at(tmp_path / "models", FakeServices())


def refused(registry: ModelRegistry, package: Path) -> str:
    with pytest.raises(RegistrationError) as caught:
        registry.register(package, name="fraud", feature_service="svc")
    assert registry.names() == []  # nothing was stored
    return str(caught.value)


def test_a_matching_package_registers_as_version_1_production(registry: ModelRegistry, tmp_path: Path) -> None:
    model = registry.register(make_package(tmp_path / "p", SERVICE), name="fraud", feature_service="svc")
    assert (model.version, model.aliases) == (1, (PRODUCTION,))
    assert model.manifest.name == "fraud" and model.manifest.version == 1
    assert registry.get("fraud").version == 1


@pytest.mark.parametrize("flavor", [Flavor.lightgbm, Flavor.xgboost])
def test_a_subset_of_the_service_in_another_order_registers(
    registry: ModelRegistry, tmp_path: Path, flavor: Flavor
) -> None:
    features = [SERVICE[2], SERVICE[0]]
    model = registry.register(make_package(tmp_path / "p", features, flavor), name="fraud", feature_service="svc")
    assert model.manifest.feature_names == ["merchant_fraud_rate_30d", "amount"]


def test_extra_feature(registry: ModelRegistry, tmp_path: Path) -> None:
    message = refused(registry, make_package(tmp_path / "p", [*SERVICE, ("shoe_size", "float64")]))
    assert "extra feature 'shoe_size'" in message
    assert "missing" not in message


def test_the_smoke_test_reads_the_models_columns_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The offline rows come in the service's order; the model gets its own columns, in its order."""
    import core.registry.registry as module

    class Numbered(FakeServices):
        def sample_matrix(self, name: str, rows: int) -> np.ndarray:
            return np.tile(np.arange(len(self.fields), dtype=np.float64), (rows, 1))  # column i holds i

    seen: list[np.ndarray] = []
    real = module.load_runtime

    def load(*args: Any, **kwargs: Any) -> Any:
        runtime = real(*args, **kwargs)
        predict = runtime.predict
        runtime.predict = lambda rows: seen.append(rows) or predict(rows)  # type: ignore[method-assign]
        return runtime

    monkeypatch.setattr(module, "load_runtime", load)
    registry = ModelRegistry.at(tmp_path / "models", Numbered())
    registry.register(make_package(tmp_path / "p", [SERVICE[2], SERVICE[0]]), name="fraud", feature_service="svc")
    assert seen and (seen[0] == [2.0, 0.0]).all()


def test_wrong_type(tmp_path: Path) -> None:
    registry = ModelRegistry.at(
        tmp_path / "models", FakeServices([*SERVICE[:2], ("merchant_fraud_rate_30d", "string")])
    )
    message = refused(registry, make_package(tmp_path / "p", SERVICE))
    assert "type of 'merchant_fraud_rate_30d': the model expects float64, feature service svc serves string" in message


def test_every_offending_feature_is_named(registry: ModelRegistry, tmp_path: Path) -> None:
    message = refused(registry, make_package(tmp_path / "p", [SERVICE[0], ("a", "float64"), ("b", "float64")]))
    for name in ("'a'", "'b'"):
        assert name in message
    assert "amount" not in message


def test_corrupt_model_file(registry: ModelRegistry, tmp_path: Path) -> None:
    package = make_package(tmp_path / "p", SERVICE)
    (package / "model.txt").write_text("tree\nthis is not a model\n")
    assert "corrupt model file: model.txt is not a LightGBM model file" in refused(registry, package)


def test_corrupt_xgboost_model_file(registry: ModelRegistry, tmp_path: Path) -> None:
    package = make_package(tmp_path / "p", SERVICE, Flavor.xgboost)
    (package / "model.json").write_text('{"learner": 3}')
    assert "corrupt model file: model.json is not an XGBoost model file" in refused(registry, package)


def test_a_pickle_is_refused_whatever_its_name(registry: ModelRegistry, tmp_path: Path) -> None:
    package = make_package(tmp_path / "p", SERVICE)
    (package / "model.txt").write_bytes(pickle.dumps({"trees": []}))
    message = refused(registry, package)
    assert "pickled files" in message and "model.txt" in message
    other = make_package(tmp_path / "q", SERVICE)
    (other / "preprocessor.pkl").write_bytes(b"anything")
    assert "preprocessor.pkl" in refused(registry, other)


def test_unknown_feature_service(registry: ModelRegistry, tmp_path: Path) -> None:
    package = make_package(tmp_path / "p", SERVICE, feature_service="fraud_v9")
    with pytest.raises(RegistrationError, match="unknown feature service 'fraud_v9'; Feast knows: other, svc"):
        registry.register(package, name="fraud")


class UnservableServices(FakeServices):
    """A feature store whose service the API could not serve (resolved as the API resolves it, in the real one)."""

    def serving_problems(self, name: str) -> list[str]:
        return ["customer_profile: entity customer's join key 'customer_id' is not an event field"]

    def sample_matrix(self, name: str, rows: int) -> np.ndarray:  # pragma: no cover - never reached
        raise AssertionError("a service the API cannot serve is refused before the smoke test")


def test_a_service_the_api_cannot_serve_is_refused_naming_the_view(tmp_path: Path) -> None:
    registry = ModelRegistry.at(tmp_path / "models", UnservableServices())
    message = refused(registry, make_package(tmp_path / "p", SERVICE))
    assert "the API cannot serve feature service svc" in message and "customer_profile" in message


def test_serving_problems_resolve_the_plan_on_a_feast_store(tmp_path: Path) -> None:
    """With a Feast store, registration resolves the feature plan with the API's own code."""
    from core.registry.checks import serving_problems
    from fraudserve.registry import FeastFeatureServices
    from inference_api.domain.plan import UnknownFeatureService

    class Store:
        def get_feature_service(self, name: str, allow_cache: bool = False) -> None:
            raise UnknownFeatureService(name)

    services = FeastFeatureServices(Store(), OfflineLayout(tmp_path))  # type: ignore[arg-type]
    problems = serving_problems(services, "fraud_v9")
    assert problems and "fraud_v9" in problems[0]
    assert serving_problems(FakeServices(), "svc") == []  # nothing to resolve against: not checked


def test_registering_against_another_service_than_trained_on(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(RegistrationError, match="trained on feature service 'svc', not 'other'"):
        registry.register(make_package(tmp_path / "p", SERVICE), name="fraud", feature_service="other")


def test_manifest_errors_name_the_field(registry: ModelRegistry, tmp_path: Path) -> None:
    package = make_package(tmp_path / "p", SERVICE)
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    manifest["thresholds"] = {"suspicious": 0.9, "highly_suspicious": 0.2}
    manifest["flavor"] = "sklearn"
    (package / MANIFEST_FILE).write_text(json.dumps(manifest))
    message = refused(registry, package)
    assert "flavor:" in message and "thresholds" in message


def test_stray_files_are_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    package = make_package(tmp_path / "p", SERVICE)
    (package / "notes.py").write_text("import os")
    assert "notes.py" in refused(registry, package)


def test_versions_are_immutable_and_aliases_move(registry: ModelRegistry, tmp_path: Path) -> None:
    for i in range(3):
        registry.register(make_package(tmp_path / f"p{i}", SERVICE, seed=i), name="fraud", feature_service="svc")
    assert registry.get("fraud", PRODUCTION).version == 1
    assert registry.get("fraud", CANDIDATE).version == 3  # the latest registration is the candidate
    assert registry.promote("fraud", 3).aliases == (PRODUCTION,)  # the candidate alias is consumed
    with pytest.raises(ModelNotFound):
        registry.get("fraud", CANDIDATE)
    registry.promote("fraud", 2)
    assert registry.rollback("fraud").version == 3  # back to what production pointed to before
    assert registry.get("fraud").version == 3
    original = (tmp_path / "models" / "fraud" / "versions" / "1" / "model.txt").read_bytes()
    assert original == (tmp_path / "p0" / "model.txt").read_bytes()
    with pytest.raises(ModelNotFound, match="has no version or alias 9"):
        registry.promote("fraud", 9)


def test_rollback_with_no_earlier_version(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.register(make_package(tmp_path / "p", SERVICE), name="fraud", feature_service="svc")
    with pytest.raises(RegistrationError, match="no earlier production version"):
        registry.rollback("fraud")


def test_unknown_model(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFound, match="model 'nope' is not registered"):
        registry.get("nope")


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path) -> None:
    package = make_package(tmp_path / "p", SERVICE)
    versions: list[int] = []
    errors: list[BaseException] = []

    def register() -> None:
        try:
            versions.append(ModelRegistry.at(tmp_path / "models").register(package, name="fraud").version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(versions) == list(range(1, 13))
    registry = ModelRegistry.at(tmp_path / "models")
    assert [v.version for v in registry.versions("fraud")] == list(range(1, 13))
    assert registry.get("fraud", PRODUCTION).version in versions
    # no half-written version is ever visible: only the numbered folders, each complete
    folder = tmp_path / "models" / "fraud" / "versions"
    assert sorted(p.name for p in folder.iterdir()) == sorted(str(v) for v in range(1, 13))


def test_a_version_changed_on_disk_after_registration_fails_verification(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """A framework may load a truncated model and score with fewer trees: only the checksum tells it apart."""
    model = registry.register(make_package(tmp_path / "p", SERVICE), name="fraud", feature_service="svc")
    assert registry.verify("fraud", model.version) is None
    path = registry.model_path("fraud", model.version)
    path.write_bytes(path.read_bytes()[:-10])
    problem = registry.verify("fraud", model.version)
    assert problem is not None and path.name in problem and "checksum" in problem
    path.unlink()
    assert "missing" in str(registry.verify("fraud", model.version))


class RecordedNotices:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, int]] = []

    def publish(self, name: str, change: str, version: int) -> None:
        self.sent.append((name, change, version))


def test_every_alias_change_is_announced_after_it_is_stored(tmp_path: Path) -> None:
    notices = RecordedNotices()
    registry = ModelRegistry.at(tmp_path / "models", FakeServices(), notices)
    for i in range(2):
        registry.register(make_package(tmp_path / f"p{i}", SERVICE, seed=i), name="fraud", feature_service="svc")
    registry.promote("fraud", 2)
    registry.rollback("fraud")
    assert notices.sent == [
        ("fraud", "register", 1), ("fraud", "register", 2), ("fraud", "promote:production", 2), ("fraud", "rollback", 1)
    ]  # fmt: skip
    with pytest.raises(ModelNotFound):
        registry.promote("fraud", 7)
    assert len(notices.sent) == 4  # a refused change announces nothing


def test_a_notice_that_cannot_be_sent_does_not_fail_the_change(tmp_path: Path) -> None:
    import redis

    from core.embedded_redis import free_port
    from core.registry.notices import RedisNotices

    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens there
    registry = ModelRegistry.at(tmp_path / "models", FakeServices(), RedisNotices(lambda: unreachable))
    registry.register(make_package(tmp_path / "p", SERVICE, seed=1), name="fraud", feature_service="svc")
    assert registry.get("fraud").version == 1


def test_an_unreachable_cluster_neither_fails_the_change_nor_is_contacted_before_one(tmp_path: Path) -> None:
    from redis.exceptions import RedisClusterException

    from core.registry.notices import RedisNotices

    calls: list[int] = []

    def connect() -> None:
        calls.append(1)
        raise RedisClusterException("Redis Cluster cannot be connected")  # what redis-py raises, not a RedisError

    notices = RedisNotices(connect)  # type: ignore[arg-type]
    registry = ModelRegistry.at(tmp_path / "models", FakeServices(), notices)
    assert calls == []  # opening the registry (as the API does) does not touch Redis
    registry.register(make_package(tmp_path / "p", SERVICE, seed=1), name="fraud", feature_service="svc")
    assert registry.get("fraud").version == 1 and calls == [1]


CHECKED_ELSEWHERE = """
import sys, typeguard
sys.path.insert(0, sys.argv[1])
from fraudserve.commands.models import feast_as_optimized
checked = typeguard.typechecked
with feast_as_optimized():
    import decorated  # imported before Feast: checked
    import feast  # a stand-in on sys.path: `from typeguard import typechecked` at import, as Feast's modules
    import later_in_block  # as Feast's own modules, imported meanwhile
try:
    decorated.double("x")
    raise SystemExit("imported before Feast, yet not checked")
except typeguard.TypeCheckError:
    pass
assert feast.double("not a number") == "not a numbernot a number"  # as under python -O: not instrumented
assert typeguard.typechecked is checked, "typeguard is restored after the block"
assert later_in_block.double("not a number") == "not a numbernot a number"  # not instrumented
import later
try:
    later.double("x")
except typeguard.TypeCheckError:
    print("checked after the block")
"""


def test_the_register_command_imports_feast_as_python_O_would(tmp_path: Path) -> None:
    # What typeguard's @typechecked does under `python -O` (nothing) for what is imported from Feast's import on
    # (a stand-in module named feast, first on sys.path), and only in the block.
    source = "from typeguard import typechecked\n\n@typechecked\ndef double(x: int) -> int:\n    return x * 2\n"
    for name in ("decorated", "feast", "later_in_block", "later"):
        (tmp_path / f"{name}.py").write_text(source)
    command = [sys.executable, "-c", CHECKED_ELSEWHERE, str(tmp_path)]
    ran = subprocess.run(command, capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "checked after the block"
