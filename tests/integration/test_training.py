"""Training sets from Feast are point-in-time correct; trained models beat the baseline and register via Feast."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from core.models.manifest import Flavor
from core.settings import Settings
from fraudserve import feature_store
from fraudserve.registry import PRODUCTION, RegistrationError, open_registry
from pipelines.generate import GenerateConfig, generate
from pipelines.offline.backfill import backfill
from pipelines.training.dataset import LabelPolicy, TrainingSet, build_training_set
from pipelines.training.train import TrainConfig, train
from tests.features_harness import DAY, HOUR, T0, label, txn, write_jsonl
from tests.redis_process import RedisProcess


@dataclass
class Home:
    settings: Settings
    redis: RedisProcess


@pytest.fixture(scope="module")
def redis_for_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def make_home(root: Path, redis: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(root))
    monkeypatch.setenv("FRAUDSERVE_REDIS", redis.connection_string)
    settings = Settings()
    feature_store.apply(settings, redis.connection_string)
    return Home(settings, redis)


def test_training_set_is_point_in_time_correct(
    tmp_path: Path, redis_for_module: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home(tmp_path / "home", redis_for_module, monkeypatch)
    rows = [
        txn("a", T0, card="c1", merchant="m1", amount=10),
        txn("b", T0 + HOUR, card="c1", merchant="m1", amount=20),
        txn("c", T0 + 2 * DAY, card="c1", merchant="m1", amount=30),
        txn("d", T0 + 3 * DAY, card="c2", merchant="m1", amount=40),  # labeled fraud only after the cut-off
        txn("e", T0 + 4 * DAY, card="c2", merchant="m1", amount=50),  # reversed before the cut-off
        txn("f", T0 + 19 * DAY, card="c3", merchant="m1", amount=60),  # too recent at the cut-off: left out
    ]
    cutoff = T0 + 20 * DAY
    labels = [
        label("b", T0 + 2 * DAY + HOUR),  # fraud, known after "c" (so "c" must not see it) but before "d"
        label("d", cutoff + 1),  # arrives one millisecond after the cut-off: "d" counts as genuine
        label("e", T0 + 5 * DAY),
        label("e", T0 + 6 * DAY, is_fraud=False),
        label("f", T0 + 19 * DAY + HOUR),
    ]
    backfill(
        write_jsonl(tmp_path / "tx.jsonl", rows), write_jsonl(tmp_path / "labels.jsonl", labels), home.settings.offline
    )
    store = feature_store.open_store(home.settings, home.redis.connection_string)
    policy = LabelPolicy(cutoff=datetime.fromtimestamp(cutoff / 1000, UTC), maturity=timedelta(days=10))
    frame = build_training_set(store, "fraud_v2", home.settings.offline, policy).frame.set_index("transaction_id")

    assert list(frame.index) == ["a", "b", "c", "d", "e"]  # "f" is immature
    assert frame["is_fraud"].to_dict() == {"a": False, "b": True, "c": False, "d": False, "e": False}
    # Each row sees the card as of its own time, never a later event of the card.
    assert frame["card_txn_count_24h"].to_dict() == {"a": 1, "b": 2, "c": 1, "d": 1, "e": 1}
    assert frame.loc["b", "card_amount_sum_24h"] == 30.0
    assert frame.loc["a", "card_amount_max_7d"] == 10.0
    # The fraud verdict on "b" is known from T0 + 2 d + 1 h: "c" (at 2 d) must not see it, "d" (at 3 d) does.
    assert frame.loc["c", "merchant_fraud_rate_30d"] == 0.0
    assert frame.loc["d", "merchant_fraud_rate_30d"] == pytest.approx(1 / 4)
    # Request-time features come from the same row's values.
    assert frame.loc["b", "amount_to_card_mean_7d"] == pytest.approx(20 / 15)
    assert frame.loc["b", "hour_of_day_utc"] == datetime.fromtimestamp((T0 + HOUR) / 1000, UTC).hour
    assert pd.isna(frame.loc["a", "card_seconds_since_prev_txn"])


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory, redis_for_module: RedisProcess) -> Iterator[Home]:
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as monkeypatch:
        home = make_home(root / "home", redis_for_module, monkeypatch)
        generated = generate(
            root / "raw", GenerateConfig(seed=5, cards=900, days=34, end=datetime(2026, 11, 1, tzinfo=UTC))
        )
        backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], home.settings.offline)
        yield home


@pytest.fixture(scope="module")
def v2_training_set(trained_home: Home) -> TrainingSet:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FRAUDSERVE_HOME", str(trained_home.settings.home_dir))
        store = feature_store.open_offline_store(trained_home.settings)
        return build_training_set(store, "fraud_v2", trained_home.settings.offline, LabelPolicy())


@pytest.mark.timeout(300)
@pytest.mark.parametrize("flavor", [Flavor.lightgbm, Flavor.xgboost])
def test_model_beats_the_rules_baseline_and_is_deterministic(
    trained_home: Home, v2_training_set: TrainingSet, tmp_path: Path, flavor: Flavor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(trained_home.settings.home_dir))
    training_set = v2_training_set
    config = TrainConfig(flavor=flavor, seed=3)
    first = train(training_set, config, tmp_path / "one")
    second = train(training_set, config, tmp_path / "two")
    evaluation = first.manifest.evaluation
    assert evaluation is not None and evaluation.model.pr_auc is not None and evaluation.baseline.pr_auc is not None
    print(f"\n{flavor.value}: model {evaluation.model} baseline {evaluation.baseline}")
    assert evaluation.model.positives > 10
    assert evaluation.model.pr_auc > evaluation.baseline.pr_auc
    assert evaluation.model.roc_auc is not None and evaluation.baseline.roc_auc is not None
    assert evaluation.model.roc_auc > evaluation.baseline.roc_auc
    model_file = first.manifest.model_file
    assert second.manifest.thresholds == first.manifest.thresholds
    assert (tmp_path / "one" / model_file).read_bytes() == (tmp_path / "two" / model_file).read_bytes()
    assert first.manifest.thresholds.highly_suspicious >= first.manifest.thresholds.suspicious
    assert first.manifest.feature_names == training_set.feature_names

    registry = open_registry(trained_home.settings)
    model = registry.register(first.package, name=f"fraud-{flavor.value}", feature_service="fraud_v2")
    assert model.version == 1 and model.aliases == (PRODUCTION,)


@pytest.mark.timeout(300)
def test_a_fraud_v2_model_is_refused_for_fraud_v1_by_the_real_feature_store(
    trained_home: Home, v2_training_set: TrainingSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fraud_v1 lacks the device and IP features a fraud_v2 model reads (a fraud_v1 model, a subset of fraud_v2's
    features, would register against fraud_v2)."""
    monkeypatch.setenv("FRAUDSERVE_HOME", str(trained_home.settings.home_dir))
    result = train(v2_training_set, TrainConfig(flavor=Flavor.lightgbm, rounds=20), tmp_path / "v2")
    manifest_path = result.package / "manifest.json"
    manifest_path.write_text(manifest_path.read_text().replace('"fraud_v2"', '"fraud_v1"'))
    with pytest.raises(RegistrationError) as caught:
        open_registry(trained_home.settings).register(result.package, name="mixed", feature_service="fraud_v1")
    for name in ("device_distinct_cards_24h", "ip_distinct_cards_24h", "ip_txn_count_1h"):
        assert f"extra feature '{name}'" in str(caught.value)
    assert "mixed" not in open_registry(trained_home.settings).names()  # nothing left behind


@pytest.mark.timeout(300)
def test_asof_offline_store_equals_feasts_own_duckdb_store(trained_home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ASOF plugin keeps Feast's contract: the same rows and values as Feast's DuckDB store, on 3,000 rows.

    Feast's own store cannot compute a window view's aggregations, so it is given each window view as it reads it
    offline (`offline_view`: the file the backfill computed), as `materialize --engine feast` is."""
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStore

    from pipelines.features.catalog import load_catalog
    from pipelines.offline.feast_asof import AsofDuckDBOfflineStore
    from pipelines.offline.store import offline_view
    from pipelines.training.dataset import labeled_entity_rows

    monkeypatch.setenv("FRAUDSERVE_HOME", str(trained_home.settings.home_dir))
    store = feature_store.open_offline_store(trained_home.settings)
    catalog = load_catalog(trained_home.settings.feature_repo)
    views = [store.get_stream_feature_view(v.view) for v in catalog.window_views]
    views.append(store.get_feature_view("transaction_features"))
    refs = [f"{v.view}:{f.name}" for v in catalog.window_views for f in v.features] + ["transaction_features:amount"]
    rows, _ = labeled_entity_rows(trained_home.settings.offline, LabelPolicy())
    rows = rows.sample(3000, random_state=1)
    ours = AsofDuckDBOfflineStore.get_historical_features(
        store.config, views, refs, rows, store.registry, store.project
    ).to_df()
    theirs = DuckDBOfflineStore.get_historical_features(
        store.config, [offline_view(store, v) for v in views], refs, rows, store.registry, store.project
    ).to_df()
    left = ours.sort_values("transaction_id").reset_index(drop=True)
    right = theirs.sort_values("transaction_id").reset_index(drop=True)
    features = [ref.split(":", 1)[1] for ref in refs]
    assert len(left) == len(right) == 3000 and len(features) > 15
    assert set(features) <= set(right.columns)
    for column in right.columns:
        if column in ("event_timestamp",):
            continue
        pd.testing.assert_series_equal(left[column], right[column], check_dtype=False, check_exact=False, rtol=1e-12)
