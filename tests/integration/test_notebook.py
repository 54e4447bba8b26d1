"""The data scientist's path (SPEC "From a notebook"): a training frame from a feature service, a model trained on
it in Python, a package saved from the model object, registered and served, on a real Feast and Redis."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from feast.errors import FeastEntityDFMissingColumnsError

from core.models.manifest import Flavor
from fraudserve import feature_store
from fraudserve.training import training_frame
from pipelines.training.dataset import LabelPolicy, build_training_set
from tests.deployment import Deployment, deploy


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deploy(tmp_path_factory.mktemp("notebook"), flavors=(Flavor.lightgbm,)) as built:
        yield built


@pytest.fixture
def home(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(deployment.settings.home_dir))
    monkeypatch.setenv("FRAUDSERVE_REDIS", deployment.redis.connection_string)
    return deployment


@pytest.fixture(scope="module")
def v1_frame(deployment: Deployment) -> pd.DataFrame:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("FRAUDSERVE_HOME", str(deployment.settings.home_dir))
        return training_frame("fraud_v1", settings=deployment.settings, chunk_rows=7_000)


def test_training_frame_is_the_training_set_of_fraudserve_train(home: Deployment, v1_frame: pd.DataFrame) -> None:
    store = feature_store.open_offline_store(home.settings)
    service = [f.name for p in store.get_feature_service("fraud_v1").feature_view_projections for f in p.features]
    frame = v1_frame
    assert list(frame.columns) == ["transaction_id", "event_timestamp", "card_id", "merchant_id", *service, "is_fraud"]
    assert set(frame["is_fraud"].unique()) == {0, 1} and frame["is_fraud"].dtype == np.int8
    built = build_training_set(store, "fraud_v1", home.settings.offline, LabelPolicy()).frame
    assert len(frame) == len(built) > 10_000
    pd.testing.assert_series_equal(frame["transaction_id"], built["transaction_id"])
    assert (frame["is_fraud"].to_numpy() == built["is_fraud"].astype(int).to_numpy()).all()
    for name in service:
        pd.testing.assert_series_equal(frame[name], built[name], check_dtype=False)
    # the maturity rule: nothing younger than 10 days at the cut-off
    cutoff = pd.Timestamp(frame.attrs["fraudserve"]["label_cutoff"])
    assert frame["event_timestamp"].max() <= cutoff - pd.Timedelta(days=10)
    shorter = training_frame("fraud_v1", settings=home.settings, label_maturity_days=3)
    assert len(shorter) > len(frame)


def test_feasts_own_get_historical_features_gives_the_same_values_and_no_extra_column(
    home: Deployment, v1_frame: pd.DataFrame
) -> None:
    store = feature_store.open_offline_store(home.settings)
    sample = v1_frame.sample(2_000, random_state=3).reset_index(drop=True)
    entity = sample[["transaction_id", "event_timestamp", "card_id", "merchant_id", "is_fraud"]]
    theirs = store.get_historical_features(entity_df=entity, features=store.get_feature_service("fraud_v1")).to_df()
    features = list(v1_frame.attrs["fraudserve"]["features"])
    assert list(theirs.columns) == [*entity.columns, *features]  # no event_time_ms (an on-demand view's input)
    theirs = theirs.set_index("transaction_id").loc[sample["transaction_id"]].reset_index()
    for name in features:
        pd.testing.assert_series_equal(theirs[name], sample[name], check_dtype=False, check_names=False)
    # asked for explicitly, an on-demand view's input is kept
    refs = ["transaction_request_features:hour_of_day_utc", "transaction_features:event_time_ms"]
    asked = store.get_historical_features(entity_df=entity.head(5), features=refs).to_df()
    assert set(asked.columns) == {*entity.columns, "hour_of_day_utc", "event_time_ms"}


def test_an_entity_frame_without_a_join_key_gets_feasts_own_error(home: Deployment, v1_frame: pd.DataFrame) -> None:
    store = feature_store.open_offline_store(home.settings)
    entity = v1_frame[["transaction_id", "event_timestamp"]].head(5)
    with pytest.raises(FeastEntityDFMissingColumnsError) as caught:
        store.get_historical_features(entity_df=entity, features=store.get_feature_service("fraud_v1")).to_df()
    assert "card_id" in str(caught.value) and "merchant_id" in str(caught.value)
    assert "Binder" not in str(caught.value)
