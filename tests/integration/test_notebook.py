"""The data scientist's path (SPEC "From a notebook"): a training frame from a feature service, a model trained on
it in Python, a package saved from the model object, registered and served, on a real Feast and Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


# ------------------------------------------------------------------------------------------- a model from Python
SUBSET = [  # 12 of fraud_v1's features, not in the service's order
    "merchant_fraud_rate_30d", "amount", "card_txn_count_1h", "amount_to_card_mean_7d", "hour_of_day_utc",
    "card_amount_sum_24h", "card_seconds_since_prev_txn", "merchant_txn_count_24h", "card_distinct_merchants_24h",
    "card_amount_max_7d", "card_txn_count_10m", "merchant_amount_mean_7d",
]  # fmt: skip


def _split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = frame["event_timestamp"].quantile(0.75)
    return frame[frame["event_timestamp"] <= cut], frame[frame["event_timestamp"] > cut]


def test_an_xgbclassifier_on_a_subset_in_another_order_registers_and_serves_exactly(
    home: Deployment, v1_frame: pd.DataFrame, tmp_path: Path
) -> None:
    import httpx
    import xgboost

    from fraudserve.models import save_package
    from fraudserve.registry import open_registry
    from tests.api_server import ApiServer

    train, valid = _split(v1_frame)
    model = xgboost.XGBClassifier(n_estimators=40, max_depth=4, learning_rate=0.2, n_jobs=2, random_state=1)
    model.fit(train[SUBSET], train["is_fraud"])
    manifest = save_package(model, tmp_path / "pkg", feature_service="fraud_v1", validation=valid, training=train)
    assert manifest.flavor is Flavor.xgboost and manifest.feature_names == SUBSET
    assert sorted(p.name for p in (tmp_path / "pkg").iterdir()) == ["manifest.json", "model.json"]
    assert manifest.evaluation is not None and manifest.evaluation.model.rows == len(valid)
    assert manifest.training is not None and manifest.training.train_rows == len(train)
    assert manifest.reference is not None and set(manifest.reference.features) == set(SUBSET)
    assert {f.name: f.dtype for f in manifest.features}["card_txn_count_1h"] == "int64"
    registered = open_registry(home.settings).register(tmp_path / "pkg", name="subset", feature_service="fraud_v1")

    store = feature_store.open_store(home.settings, home.redis.connection_string)
    ids = home.recent[:8]
    keys = store.get_online_features(
        features=["transaction_features:card_id", "transaction_features:merchant_id"],
        entity_rows=[{"transaction_id": t} for t in ids],
    ).to_dict()
    online = store.get_online_features(features=store.get_feature_service("fraud_v1"), entity_rows=[
        {"transaction_id": t, "card_id": keys["card_id"][i], "merchant_id": keys["merchant_id"][i]}
        for i, t in enumerate(ids)
    ]).to_dict()  # fmt: skip
    vectors = pd.DataFrame({n: [np.nan if v is None else v for v in online[n]] for n in SUBSET}, dtype="float64")
    expected = model.predict_proba(vectors)[:, 1]
    settings = home.settings.model_copy(update={"model_name": "subset"})
    with ApiServer(settings) as server:
        for transaction_id, score in zip(ids, expected, strict=True):
            body = httpx.post(f"{server.url}/v1/fraud/score", json={"transaction_id": transaction_id}).json()
            assert body["model"] == {"name": "subset", "version": registered.version}, body
            assert body["score"] == pytest.approx(float(score), rel=1e-5, abs=1e-7)
            assert {r["feature"] for r in body["reasons"]} <= set(SUBSET)
        meta = httpx.get(f"{server.url}/v2/models/subset").json()
        assert meta["parameters"]["features"] == SUBSET


def test_a_lightgbm_booster_with_thresholds_chosen_on_validation(
    home: Deployment, v1_frame: pd.DataFrame, tmp_path: Path
) -> None:
    import lightgbm

    from fraudserve.models import register_model

    train, valid = _split(v1_frame)
    features = list(v1_frame.attrs["fraudserve"]["features"])
    booster = lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_threads": 2, "seed": 1},
        lightgbm.Dataset(train[features], train["is_fraud"]),
        num_boost_round=50,
    )
    model = register_model(booster, name="booster", feature_service="fraud_v1", validation=valid)
    assert model.manifest.flavor is Flavor.lightgbm and model.manifest.feature_names == features
    assert "validation" in model.manifest.thresholds.method


def test_save_package_refusals_name_the_fix_and_leave_nothing(
    home: Deployment, v1_frame: pd.DataFrame, tmp_path: Path
) -> None:
    import lightgbm

    from fraudserve.models import save_package
    from fraudserve.registry import RegistrationError

    train = v1_frame.head(3000)
    renamed = train[SUBSET].rename(columns={"amount": "amount_eur", "hour_of_day_utc": "hour"})
    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(renamed, train["is_fraud"])
    with pytest.raises(RegistrationError) as caught:
        save_package(model, tmp_path / "pkg", feature_service="fraud_v1", thresholds=(0.3, 0.8))
    assert "'amount_eur'" in str(caught.value) and "'hour'" in str(caught.value)
    assert not (tmp_path / "pkg").exists() and list(tmp_path.iterdir()) == []

    bare = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(train[SUBSET].to_numpy(), train["is_fraud"])
    with pytest.raises(RegistrationError, match="does not name its features"):
        save_package(bare, tmp_path / "pkg", feature_service="fraud_v1", thresholds=(0.3, 0.8))
    named = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(train[SUBSET], train["is_fraud"])
    with pytest.raises(RegistrationError, match="thresholds=\\(suspicious, highly_suspicious\\), or validation"):
        save_package(named, tmp_path / "pkg", feature_service="fraud_v1")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------- MLflow
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.mlflow_server import MlflowServer, executable

    pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[mlflow]'")
    binary = executable()
    if binary is None:
        pytest.skip("no MLflow server: `.venv/bin/python -m tests.mlflow_server` installs one (.ci/run does)")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), binary).start()
    yield server.url
    server.stop()


@pytest.fixture
def tracking(mlflow_server: str, home: Deployment, monkeypatch: pytest.MonkeyPatch) -> Deployment:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    return home


def _booster(frame: pd.DataFrame, features: list[str]) -> object:
    import lightgbm

    return lightgbm.train(
        {"objective": "binary", "verbose": -1, "num_threads": 2, "seed": 1},
        lightgbm.Dataset(frame[features], frame["is_fraud"]),
        num_boost_round=30,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_mlflow_model_registers_by_version_alias_and_run(
    tracking: Deployment, v1_frame: pd.DataFrame, tmp_path: Path
) -> None:
    import mlflow
    from mlflow.models import infer_signature
    from typer.testing import CliRunner

    from fraudserve.cli import app
    from fraudserve.registry import open_registry

    booster = _booster(v1_frame, SUBSET)
    with mlflow.start_run() as run:
        logged = mlflow.lightgbm.log_model(
            booster, name="model", registered_model_name="fraud-mlflow",
            signature=infer_signature(v1_frame[SUBSET].astype("float64").head(50)),
        )  # fmt: skip
    client = mlflow.MlflowClient()
    client.set_model_version_tag("fraud-mlflow", "1", "fraudserve.thresholds", "0.25,0.75")
    client.set_registered_model_alias("fraud-mlflow", "champion", "1")

    result = CliRunner().invoke(
        app, ["models", "register", "models:/fraud-mlflow/1", "--name", "from-mlflow", "--feature-service", "fraud_v1"]
    )
    assert result.exit_code == 0, result.output
    assert run.info.run_id in result.output
    registry = open_registry(tracking.settings)
    stored = registry.get("from-mlflow", 1).manifest
    assert stored.feature_names == SUBSET and stored.flavor is Flavor.lightgbm
    assert (stored.thresholds.suspicious, stored.thresholds.highly_suspicious) == (0.25, 0.75)
    assert stored.params["source"] == {
        "uri": "models:/fraud-mlflow/1", "run_id": run.info.run_id, "mlflow_version": mlflow.__version__,
    }  # fmt: skip

    by_alias = registry.register("models:/fraud-mlflow@champion", name="from-mlflow", feature_service="fraud_v1")
    assert by_alias.version == 2 and by_alias.manifest.thresholds.highly_suspicious == 0.75
    by_run = registry.register(
        f"runs:/{run.info.run_id}/model", name="from-mlflow", feature_service="fraud_v1", thresholds=(0.1, 0.9)
    )
    assert by_run.manifest.thresholds.suspicious == 0.1
    # no thresholds given or tagged (a logged model's own URI): chosen on the latest mature labelled days, printed
    result = CliRunner().invoke(
        app, ["models", "register", logged.model_uri, "--name", "from-mlflow", "--feature-service", "fraud_v1"]
    )
    assert result.exit_code == 0, result.output
    assert "thresholds chosen on the latest" in result.output
    assert "validation" in registry.get("from-mlflow", 4).manifest.thresholds.method
    scores = [lightgbm_predict(registry.model_path("from-mlflow", v), v1_frame[SUBSET].head(20)) for v in (1, 2, 3)]
    expected = booster.predict(v1_frame[SUBSET].head(20))  # type: ignore[attr-defined]
    for got in scores:
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def lightgbm_predict(path: Path, frame: pd.DataFrame) -> np.ndarray:
    import lightgbm

    return np.asarray(lightgbm.Booster(model_file=str(path)).predict(frame))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mlflow_models_that_are_not_native_or_disagree_are_refused_and_leave_nothing(
    tracking: Deployment, v1_frame: pd.DataFrame
) -> None:
    import lightgbm
    import mlflow
    from mlflow.models import infer_signature

    from fraudserve.registry import RegistrationError, open_registry

    train = v1_frame.head(4000)
    wrapper = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(train[SUBSET], train["is_fraud"])
    with mlflow.start_run():
        pickled = mlflow.lightgbm.log_model(wrapper, name="model", serialization_format="cloudpickle")
        cloudpickled = mlflow.sklearn.log_model(wrapper, name="sk", serialization_format="cloudpickle")
        other = [*SUBSET[1:], SUBSET[0]]
        disagreeing = mlflow.lightgbm.log_model(
            _booster(train, SUBSET), name="sig", signature=infer_signature(train[other].astype("float64").head(5))
        )
    registry = open_registry(tracking.settings)
    for info, expected in (
        (pickled, "model.booster_"),
        (cloudpickled, "mlflow.sklearn model (cloudpickle)"),
        (disagreeing, "signature's inputs are not the model file's features"),
    ):
        with pytest.raises(RegistrationError) as caught:
            registry.register(info.model_uri, name="refused", feature_service="fraud_v1", thresholds=(0.3, 0.8))
        assert expected in str(caught.value), str(caught.value)
    assert "refused" not in registry.names()


# ---------------------------------------------------------------------------------------------- examples/notebook
NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_example_notebook_runs_registers_from_mlflow_and_scores_through_the_api(
    tracking: Deployment, mlflow_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import json

    import httpx
    import nbformat
    from nbclient import NotebookClient

    from fraudserve.registry import open_registry
    from tests.api_server import ApiServer

    name, transaction_id = "notebook", tracking.recent[0]
    settings = tracking.settings.model_copy(update={"model_name": name, "model_poll_seconds": 0.5})
    with ApiServer(settings) as server:  # serves `name` once the notebook has registered and promoted it
        for variable, value in {
            "FRAUDSERVE_API": server.url, "MLFLOW_TRACKING_URI": mlflow_server, "FRAUDSERVE_MODEL_NAME": name,
            "FRAUDSERVE_NOTEBOOK_TRANSACTION": transaction_id, "FRAUDSERVE_NOTEBOOK_ROWS": "8000",
        }.items():  # fmt: skip
            monkeypatch.setenv(variable, value)  # the kernel inherits the environment
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        # the kernel is this interpreter (ipykernel's own "python3"), so the project's venv
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()  # raises CellExecutionError on any failing cell
        outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"]
        printed = json.loads(notebook.cells[-1].outputs[-1]["text"].strip().splitlines()[-1])
        body = httpx.post(f"{server.url}/v1/fraud/score", json={"transaction_id": transaction_id}).json()

    registered = open_registry(tracking.settings).get(name)
    assert registered.version == 1 and registered.manifest.feature_service == "fraud_v1"
    source = registered.manifest.params["source"]
    assert source["uri"] == f"models:/{name}/1" and source["run_id"]
    assert (registered.manifest.thresholds.suspicious, registered.manifest.thresholds.highly_suspicious) == (0.3, 0.8)
    assert printed["transaction_id"] == transaction_id
    assert printed["model"] == body["model"] == {"name": name, "version": 1}
    assert printed["score"] == body["score"]
