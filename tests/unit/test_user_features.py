"""A data engineer's own Feast declarations (tests/user_repo.py): the catalog reads them, the offline SQL computes
them equal to the pure semantics, and definitions that cannot work are refused by name."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from core.errors import ConfigurationError
from core.settings import Settings
from fraudserve.feature_store import check_repo
from pipelines.events import transaction_kind
from pipelines.features.catalog import Agg, Catalog, load_catalog, parse_repo
from pipelines.features.semantics import evaluate
from tests.features_harness import DAY, MINUTE, T0, as_events, as_labels, label, run_backfill, txn
from tests.user_repo import user_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return user_repo(tmp_path_factory.mktemp("repo") / "feature_repo")


@pytest.fixture
def catalog(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.setenv("FRAUDSERVE_FEATURE_REPO", str(repo))
    return load_catalog()


def test_the_catalog_is_read_from_the_feast_repo(catalog: Catalog) -> None:
    views = {v.view: v for v in catalog.window_views}
    assert set(views) == {
        "card_features", "merchant_features", "device_features", "ip_features",
        "category_windows", "customer_windows", "card_velocity",
    }  # fmt: skip
    assert views["category_windows"].join_key == "merchant_category"
    assert views["customer_windows"].join_key == "customer_id"
    assert [(f.name, f.agg, f.column) for f in views["card_velocity"].features] == [
        ("card_amount_min_5m", Agg.MIN, "amount"),
        ("card_count_5m", Agg.COUNT, None),
    ]
    assert catalog.extra_fields == {"customer_id": "string", "loyalty_points": "int64"}
    # Retention of an entity's history: the longest window over its views (card: 7 days, not the velocity's 5 min).
    card = views["card_features"].entity
    assert catalog.max_window(card).days == 7
    assert [v.view for v in catalog.views_of(card)] == ["card_features", "card_velocity"]
    assert "customer_id" in transaction_kind(catalog).schema.names


@pytest.mark.parametrize("seed", [3, 4])
def test_user_views_offline_equal_the_pure_semantics(tmp_path: Path, catalog: Catalog, seed: int) -> None:
    """Random events with ties, null columns and labels: every user-declared feature of every offline row equals
    the reference."""
    rnd = random.Random(seed)
    rows = []
    for i in range(400):
        ts = T0 + rnd.randrange(0, 20 * DAY // MINUTE) * MINUTE
        extra = {"customer_id": rnd.choice([None, "u1", "u2", "u3"]), "loyalty_points": rnd.choice([None, 0, 7, 120])}
        rows.append(
            txn(
                f"t{i}",
                ts,
                card=f"c{rnd.randrange(6)}",
                amount=round(rnd.uniform(0, 300), 2),
                device=rnd.choice([None, "d1", "d2"]),
                category=rnd.choice(["5411", "5812", "4829"]),
                **extra,
            )
        )
    labels = [label(r["transaction_id"], T0 + rnd.randrange(0, 25 * DAY // MINUTE) * MINUTE) for r in rows[:120]]
    offline = run_backfill(tmp_path, rows, labels)
    events, by_txn = as_events(rows), as_labels(labels)
    checked = 0
    for name in ("category_windows", "customer_windows", "card_velocity"):
        view = catalog.window_view(name)
        table = offline.table(view)
        assert len(table) > 50, name
        ms = table["event_timestamp"].astype("datetime64[ms, UTC]").astype("int64")
        for (_, row), ts in zip(table.iterrows(), ms, strict=True):
            history = [e for e in events if e.get(view.join_key) == row[view.join_key]]
            for feature in view.features:
                expected = evaluate(feature, history, int(ts), by_txn)
                got = row[feature.name]
                if expected is None:
                    assert pd.isna(got), (name, feature.name)
                else:
                    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (name, feature.name, ts)
                checked += 1
    assert checked > 2000
    # Null keys update nothing: no customer row for an event without a customer_id.
    customers = offline.table("customer_windows")
    assert customers["customer_id"].notna().all()


BAD_VIEWS = """
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, StreamFeatureView, ValueType
from feast.aggregation import Aggregation
from feast.types import Float64, Int64

from definitions import card, transactions_source

shopper = Entity(name="shopper", join_keys=["shopper_id"], value_type=ValueType.STRING)

odd_functions = StreamFeatureView(
    name="odd_functions",
    source=transactions_source,
    entities=[card],
    ttl=timedelta(days=1),
    timestamp_field="event_timestamp",
    aggregations=[
        Aggregation(column="amount", function="median", time_window=timedelta(hours=1), name="card_median_1h"),
        Aggregation(column="tip", function="sum", time_window=timedelta(hours=1), name="card_tips_1h"),
        Aggregation(column="amount", function="max", time_window=timedelta(hours=1), name="card_unlisted_1h"),
        Aggregation(column="amount", function="sum", name="card_forever"),
    ],
    schema=[
        Field(name="card_median_1h", dtype=Float64),
        Field(name="card_tips_1h", dtype=Float64),
        Field(name="card_forever", dtype=Float64),
    ],
)

shopper_counts = StreamFeatureView(
    name="shopper_counts",
    source=transactions_source,
    entities=[shopper],
    ttl=timedelta(days=1),
    timestamp_field="event_timestamp",
    aggregations=[
        Aggregation(column="transaction_id", function="count", time_window=timedelta(hours=1), name="shopper_1h")
    ],
    schema=[Field(name="shopper_1h", dtype=Int64)],
)

tiled = StreamFeatureView(
    name="tiled",
    source=transactions_source,
    entities=[card],
    ttl=timedelta(days=1),
    timestamp_field="event_timestamp",
    aggregations=[Aggregation(column="amount", function="sum", time_window=timedelta(hours=1), name="card_tiled_1h")],
    schema=[Field(name="card_tiled_1h", dtype=Float64)],
    enable_tiling=True,
    tiling_hop_size=timedelta(minutes=5),
)

shopper_profile = FeatureView(
    name="shopper_profile",
    entities=[shopper],
    ttl=timedelta(days=30),
    schema=[Field(name="segment_score", dtype=Float64)],
    source=FileSource(path="/nowhere/shoppers.parquet", timestamp_field="updated_at"),
)
"""


def test_definitions_that_cannot_work_are_refused_naming_the_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = user_repo(tmp_path / "feature_repo", {"bad_views.py": BAD_VIEWS}, extra_fields={})
    problems = "\n".join(parse_repo(repo).problems)
    assert "odd_functions.card_median_1h: unknown function 'median'; one of count, sum, mean, min, max" in problems
    assert "odd_functions.card_tips_1h: column 'tip' is not an event field" in problems
    assert "odd_functions.card_unlisted_1h: no schema Field named 'card_unlisted_1h'" in problems
    assert "odd_functions.card_forever: sum needs a positive time_window" in problems
    assert "tiled: enable_tiling is not supported: fraudserve computes every window exactly" in problems
    assert "tiled.card_tiled_1h" not in problems  # its aggregation itself is fine
    for view in ("shopper_counts", "shopper_profile"):
        assert (
            f"{view}: entity shopper's join key 'shopper_id' is not an event field; declare it as a typed field of "
            "transaction_features" in problems
        )
    # `fraudserve features apply` stops before `feast apply`, with every problem listed.
    for name in ("FRAUDSERVE_HOME", "FRAUDSERVE_REDIS", "FRAUDSERVE_REDIS_TYPE"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    settings = Settings(feature_repo=repo, home=tmp_path / "home")
    with pytest.raises(ConfigurationError, match="nothing was applied") as refused:
        check_repo(settings, "127.0.0.1:1")
    assert "unknown function 'median'" in str(refused.value) and "shopper_profile" in str(refused.value)


def test_the_project_repo_has_no_problems() -> None:
    assert parse_repo(Settings().feature_repo).problems == ()
