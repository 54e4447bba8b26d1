"""A data engineer's own feature service is served by the API, end to end, against a real Redis and real Feast.

A temporary copy of feature_repo/ gets a `risk_views.py` beside `definitions.py`: a batch `FeatureView`
`merchant_risk` over a Parquet table written here (keyed by the built-in `merchant` entity: a float and an int
feature, two snapshots per merchant, some merchants without any), a python-mode on-demand view over it and the
transaction's amount, and a `FeatureService` `fraud_v3` of card_features, merchant_risk, the on-demand view and
transaction_features[["amount"]]. FRAUDSERVE_FEATURE_REPO points at the copy; then apply, backfill, materialize,
train on fraud_v3, register and serve. The API's scores must be the model's on the vectors Feast's SDK reads
(`get_online_features`, on-demand view included), and the API's own feature rows those very vectors. A model on a
service whose view is keyed by a field that transactions do not carry is refused at registration, naming the view.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import lightgbm
import numpy as np
import pandas as pd
import pytest

from core.models.manifest import Flavor
from core.settings import Settings
from fraudserve import feature_store
from fraudserve.online import feature_vectors
from fraudserve.registry import ModelRegistry, RegistrationError, open_registry
from pipelines.generate import GenerateConfig, generate
from pipelines.materialize import materialize
from pipelines.offline.backfill import backfill
from pipelines.training.dataset import build_training_set
from pipelines.training.train import TrainConfig, train
from tests.api_server import ApiServer
from tests.model_packages import make_package
from tests.redis_process import RedisProcess

REPO = Path(__file__).resolve().parents[2] / "feature_repo"

RISK_VIEWS = """
import os
from datetime import timedelta
from pathlib import Path

from feast import FeatureService, FeatureView, Field, FileSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64

from definitions import card_features, merchant, merchant_features, transaction_features

_table = Path(os.environ.get("FRAUDSERVE_HOME", ".fraudserve")).expanduser().resolve() / "merchant_risk.parquet"

merchant_risk = FeatureView(
    name="merchant_risk",
    entities=[merchant],
    ttl=timedelta(days=365),
    schema=[Field(name="merchant_risk_score", dtype=Float64), Field(name="merchant_chargebacks_90d", dtype=Int64)],
    source=FileSource(name="merchant_risk_source", path=str(_table), timestamp_field="as_of"),
    online=True,
    description="A risk team's merchant scores, as of each snapshot.",
)


@on_demand_feature_view(
    sources=[merchant_risk, transaction_features[["amount"]]],
    schema=[Field(name="amount_times_risk", dtype=Float64), Field(name="risky_and_large", dtype=Int64)],
    mode="python",
)
def merchant_risk_request(inputs: dict) -> dict:
    out = {"amount_times_risk": [], "risky_and_large": []}
    for amount, risk in zip(inputs["amount"], inputs["merchant_risk_score"]):
        known = amount is not None and risk is not None
        out["amount_times_risk"].append(amount * risk if known else None)
        out["risky_and_large"].append(1 if known and risk > 0.5 and amount > 100 else 0)
    return out


@on_demand_feature_view(
    sources=[merchant_risk[["merchant_chargebacks_90d"]], merchant_features[["merchant_txn_count_24h"]]],
    schema=[Field(name="chargebacks_per_txn", dtype=Float64)],
    mode="pandas",
)
def merchant_risk_frame(inputs):
    import pandas as pd

    count = pd.to_numeric(inputs["merchant_txn_count_24h"], errors="coerce")
    chargebacks = pd.to_numeric(inputs["merchant_chargebacks_90d"], errors="coerce")
    return pd.DataFrame({"chargebacks_per_txn": (chargebacks / (count + 1)).astype("float64")})


# Two views of one join key (merchant_id), read from one Redis hash, and a pandas-mode view over both.
merchant_mix = FeatureService(
    name="merchant_mix",
    features=[merchant_features, merchant_risk[["merchant_risk_score"]], merchant_risk_frame, merchant_risk_request],
)

fraud_v3 = FeatureService(
    name="fraud_v3",
    features=[card_features, merchant_risk, merchant_risk_request, transaction_features[["amount"]]],
    description="Card features, the risk team's merchant scores and their request-time product.",
)
"""


@dataclass
class UserDeployment:
    settings: Settings
    redis: RedisProcess
    registry: ModelRegistry
    recent: list[str]


def write_risk_table(path: Path, transactions: Path, start: datetime) -> None:
    """Two snapshots per merchant (the later one wins online), every seventh merchant without any."""
    merchants = sorted(
        str(r[0])
        for r in duckdb.connect().execute(f"SELECT DISTINCT merchant_id FROM read_parquet('{transactions}')").fetchall()
    )
    rng = np.random.default_rng(5)
    rows = []
    for i, merchant in enumerate(merchants):
        if i % 7 == 3:
            continue
        for as_of in (start - timedelta(days=1), start + timedelta(days=10)):
            rows.append(
                {"merchant_id": merchant, "as_of": as_of, "merchant_risk_score": float(rng.uniform()),
                 "merchant_chargebacks_90d": int(rng.integers(0, 20))}
            )  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["as_of"] = pd.to_datetime(frame["as_of"], utc=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Microsecond timestamps: the fast materialize engine cannot read nanosecond ones (pandas' default) yet.
    frame.to_parquet(path, index=False, coerce_timestamps="us", allow_truncated_timestamps=True)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserDeployment]:
    root = tmp_path_factory.mktemp("user-service")
    repo = root / "feature_repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("__pycache__", "data", "*.db"))
    (repo / "risk_views.py").write_text(RISK_VIEWS)
    redis = RedisProcess(root / "redis").start()
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setenv("FRAUDSERVE_HOME", str(root / "home"))
            monkeypatch.setenv("FRAUDSERVE_FEATURE_REPO", str(repo))
            monkeypatch.setenv("FRAUDSERVE_REDIS", redis.connection_string)
            monkeypatch.setenv("FRAUDSERVE_REDIS_TYPE", "redis")
            monkeypatch.setenv("FRAUDSERVE_MODEL_POLL_SECONDS", "0.2")
            settings = Settings()
            assert settings.feature_repo == repo
            end = datetime.now(UTC).replace(second=0, microsecond=0)
            generated = generate(root / "raw", GenerateConfig(seed=11, cards=500, days=32, end=end))
            write_risk_table(
                settings.home_dir / "merchant_risk.parquet",
                generated.files["transactions_parquet"],
                end - timedelta(days=32),
            )
            feature_store.apply(settings, redis.connection_string)
            backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
            store = feature_store.open_store(settings, redis.connection_string)
            materialize(store, settings.offline)
            training_set = build_training_set(store, "fraud_v3", settings.offline)
            package = train(training_set, TrainConfig(flavor=Flavor.lightgbm, seed=1), root / "pkg").package
            registry = open_registry(settings)
            registry.register(package, name="fraud", feature_service="fraud_v3")
            recent = [
                str(r[0])
                for r in duckdb.connect()
                .execute(
                    f"SELECT transaction_id FROM read_parquet('{settings.offline.transactions_file}') "
                    "ORDER BY event_timestamp DESC LIMIT 40"
                )
                .fetchall()
            ]
            yield UserDeployment(settings, redis, registry, recent)
    finally:
        redis.stop()


def feast_matrix(deployment: UserDeployment, ids: list[str], names: list[str], service: str = "fraud_v3") -> np.ndarray:
    store = feature_store.open_store(deployment.settings, deployment.redis.connection_string)
    vectors = feature_vectors(store, service, ids)
    return np.array(
        [[np.nan if v[n] is None else float(v[n]) for n in names] for v in vectors], dtype=np.float64
    ).reshape(len(ids), len(names))


def test_the_plan_reads_every_kind_of_view(deployment: UserDeployment) -> None:
    from inference_api.domain.plan import BATCH, WINDOW, resolve_plan

    store = feature_store.open_store(deployment.settings, deployment.redis.connection_string)
    plan = resolve_plan(store, "fraud_v3")
    assert {(v.view, v.kind, v.join_key) for v in plan.views} == {
        ("card_features", WINDOW, "card_id"),
        ("merchant_risk", BATCH, "merchant_id"),
    }
    risk = plan.view("merchant_risk")
    assert risk is not None and risk.ttl == timedelta(days=365) and risk.subject == "merchant_risk"
    assert [o.name for o in plan.on_demand] == ["merchant_risk_request"] and plan.request_time == ()
    assert plan.transaction_fields == ("amount",)
    assert list(plan.features) == deployment.registry.get("fraud").manifest.feature_names


@pytest.mark.parametrize("service", ["fraud_v3", "merchant_mix"])
def test_the_apis_feature_rows_are_feasts_vectors(deployment: UserDeployment, service: str) -> None:
    """The direct reader (one round trip) and the on-demand views computed with Feast's transformation give the
    very vectors Feast's SDK reads, row for row."""
    from inference_api.domain.features import FeastFeatureSource, TransactionRecord, ViewValues
    from inference_api.domain.plan import resolve_plan
    from inference_api.domain.redis_source import RedisFeatureSource
    from inference_api.domain.scoring import build_rows

    store = feature_store.open_store(deployment.settings, deployment.redis.connection_string)
    plan = resolve_plan(store, service)
    ids = deployment.recent[:30]
    expected = feast_matrix(deployment, ids, list(plan.features), service)

    source = RedisFeatureSource(store, 2.0)
    assert source.fused
    records = asyncio.run(source.transactions(ids, plan))
    found = [r for r in records if r is not None]
    assert len(found) == len(ids)
    fetched = [r.views for r in found if r.views is not None]
    matrix, uncertain, _ = build_rows(plan, found, fetched, time.time())
    np.testing.assert_allclose(matrix, expected, rtol=1e-12, equal_nan=True)
    ratio = list(plan.features).index("amount_times_risk")
    assert np.isfinite(matrix[:, ratio]).any()  # the on-demand view computed something
    # A merchant without a risk row: its features are missing and the score uncertain, naming the view.
    for row, reasons in zip(matrix, uncertain, strict=True):
        missing = np.isnan(row[list(plan.features).index("merchant_risk_score")])
        assert missing == any(r.startswith("no merchant_risk features for merchant_id") for r in reasons)

    async def through_feast() -> tuple[list[TransactionRecord | None], list[dict[str, ViewValues]]]:
        source = FeastFeatureSource(
            feature_store.open_store(deployment.settings, deployment.redis.connection_string), 2
        )
        return await source.transactions(ids), await source.views(plan, found)

    feast_records, feast_views = asyncio.run(through_feast())  # one loop: Feast keeps its async client
    assert [r.fields if r else None for r in feast_records] == [r.fields for r in found]
    via_feast, _, _ = build_rows(plan, found, feast_views, time.time())
    np.testing.assert_allclose(via_feast, expected, rtol=1e-12, equal_nan=True)


def test_scores_equal_the_model_on_feasts_online_vectors(deployment: UserDeployment) -> None:
    model = deployment.registry.get("fraud")
    assert model.manifest.feature_service == "fraud_v3"
    names = model.manifest.feature_names
    booster = lightgbm.Booster(model_file=str(deployment.registry.model_path("fraud", model.version)))
    ids = deployment.recent[:20]
    expected = booster.predict(feast_matrix(deployment, ids, names))
    with ApiServer(deployment.settings) as server:
        for transaction_id, score in zip(ids, expected, strict=True):
            response = httpx.post(f"{server.url}/v1/fraud/score", json={"transaction_id": transaction_id}, timeout=30)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["score"] == pytest.approx(float(score), rel=1e-9, abs=1e-12)
            assert body["model"] == {"name": "fraud", "version": model.version}
        batch = httpx.post(
            f"{server.url}/v1/models/fraud/predict", json={"rows": [{"transaction_id": t} for t in ids]}, timeout=30
        ).json()
        assert batch["feature_service"] == "fraud_v3"
        assert batch["scores"] == pytest.approx([float(s) for s in expected], rel=1e-9, abs=1e-12)
        # The same events sent inline, with a field the repo does not declare (ignored, as the pipelines ignore
        # it): the same scores, the transaction's own features taken from the body.
        events = inline_events(deployment, ids[:5])
        for event, score in zip(events, expected[:5], strict=True):
            response = httpx.post(
                f"{server.url}/v1/fraud/score", json={"transaction": {**event, "note": "not declared"}}, timeout=30
            )
            assert response.status_code == 200, response.text
            assert response.json()["score"] == pytest.approx(float(score), rel=1e-9, abs=1e-12)


def inline_events(deployment: UserDeployment, ids: list[str]) -> list[dict[str, object]]:
    """The events of `ids` as the API's inline body: SPEC's fields, the time in epoch milliseconds."""
    frame = (
        duckdb.connect()
        .execute(
            "SELECT transaction_id, card_id, merchant_id, device_id, ip_address, amount, currency, merchant_category,"
            " country, epoch_ms(event_timestamp) AS event_timestamp"
            f" FROM read_parquet('{deployment.settings.offline.transactions_file}') WHERE transaction_id IN ?",
            [ids],
        )
        .df()
    )
    by_id = {str(r["transaction_id"]): r for r in frame.to_dict("records")}
    return [{k: (None if pd.isna(v) else v) for k, v in by_id[t].items()} for t in ids]


def test_a_service_keyed_by_a_field_transactions_lack_is_refused_at_registration(
    deployment: UserDeployment, tmp_path: Path
) -> None:
    """Applied straight to the registry (the repo's catalog check would refuse it in `features apply`)."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    table = tmp_path / "customer_profile.parquet"
    pd.DataFrame(
        {"customer_id": ["c1"], "as_of": pd.to_datetime([datetime.now(UTC)], utc=True), "customer_tenure_days": [3.0]}
    ).to_parquet(table, index=False)
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    profile = FeatureView(
        name="customer_profile",
        entities=[customer],
        ttl=timedelta(days=30),
        schema=[Field(name="customer_tenure_days", dtype=Float64)],
        source=FileSource(name="customer_profile_source", path=str(table), timestamp_field="as_of"),
        online=True,
    )
    store = feature_store.open_store(deployment.settings, deployment.redis.connection_string)
    transaction_view = store.get_feature_view("transaction_features")
    service = FeatureService(name="fraud_bad", features=[profile, transaction_view[["amount"]]])
    store.apply([customer, profile, service])

    package = make_package(
        tmp_path / "pkg", [("customer_tenure_days", "float64"), ("amount", "float64")], feature_service="fraud_bad"
    )
    with pytest.raises(RegistrationError) as caught:
        open_registry(deployment.settings).register(package, name="customer_model", feature_service="fraud_bad")
    message = str(caught.value)
    assert "customer_profile" in message and "customer_id" in message and "cannot serve" in message
    assert "customer_model" not in deployment.registry.names()
    # The service it was added beside is still served.
    assert open_registry(deployment.settings).get("fraud").manifest.feature_service == "fraud_v3"


def test_the_score_log_holds_feasts_vector_of_a_user_declared_service(deployment: UserDeployment) -> None:
    import uuid

    from core.score_log import read_log

    names = deployment.registry.get("fraud").manifest.feature_names
    ids = deployment.recent[:8]
    prefix = f"log-{uuid.uuid4().hex[:8]}-"
    with ApiServer(deployment.settings) as server:  # stopping it writes what is logged
        for i, transaction_id in enumerate(ids):
            response = httpx.post(
                f"{server.url}/v1/fraud/score", json={"transaction_id": transaction_id},
                headers={"X-Request-ID": f"{prefix}{i}"}, timeout=30,
            )  # fmt: skip
            assert response.status_code == 200, response.text
    logged = {
        r["request_id"]: r
        for r in read_log([deployment.settings.score_log_dir]).to_pylist()
        if (r["request_id"] or "").startswith(prefix)
    }
    expected = feast_matrix(deployment, ids, names)
    for i, transaction_id in enumerate(ids):
        row = logged[f"{prefix}{i}"]
        assert row["transaction_id"] == transaction_id and row["feature_service"] == "fraud_v3"
        assert [f["name"] for f in row["features"]] == names
        vector = np.array([np.nan if f["value"] is None else f["value"] for f in row["features"]], dtype=np.float64)
        np.testing.assert_allclose(vector, expected[i], rtol=1e-12, atol=1e-12, equal_nan=True)


def test_the_training_frame_of_a_user_declared_service(
    deployment: UserDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fraudserve.training.training_frame on a service of batch and on-demand views: its own join keys, its
    features in its order, and no column beyond the entity frame's and the service's from Feast's own call."""
    from fraudserve.training import training_frame

    monkeypatch.setenv("FRAUDSERVE_HOME", str(deployment.settings.home_dir))
    monkeypatch.setenv("FRAUDSERVE_FEATURE_REPO", str(deployment.settings.feature_repo))
    frame = training_frame("merchant_mix", settings=deployment.settings)
    store = feature_store.open_offline_store(deployment.settings)
    service = store.get_feature_service("merchant_mix")
    names = [f.name for p in service.feature_view_projections for f in p.features]
    assert list(frame.columns) == ["transaction_id", "event_timestamp", "merchant_id", *names, "is_fraud"]
    entity = frame[["transaction_id", "event_timestamp", "merchant_id"]].tail(300).reset_index(drop=True)
    theirs = store.get_historical_features(entity_df=entity, features=service).to_df()
    assert set(theirs.columns) == {*entity.columns, *names}
    theirs = theirs.set_index("transaction_id").loc[entity["transaction_id"]].reset_index()
    ours = frame.tail(300).reset_index(drop=True)
    for name in names:
        pd.testing.assert_series_equal(theirs[name], ours[name], check_dtype=False, check_names=False)
