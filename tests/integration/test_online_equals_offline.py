"""After apply, backfill and materialize into a real Redis, Feast's own SDK reads back the offline values."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from core.settings import Settings
from fraudserve import feature_store
from fraudserve.online import feature_vectors
from pipelines.features.catalog import TRANSACTION_VIEW, load_catalog
from pipelines.generate import GenerateConfig, generate
from pipelines.materialize import materialize
from pipelines.offline.backfill import backfill
from tests.parity import entity_mismatches, latest_rows, same
from tests.redis_process import RedisProcess


@pytest.mark.timeout(240)
def test_online_values_equal_the_offline_values_of_the_latest_event(
    tmp_path: Path, redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FRAUDSERVE_REDIS", redis_server.connection_string)
    settings = Settings()
    generated = generate(
        tmp_path / "raw", GenerateConfig(seed=3, cards=150, days=10, end=datetime(2026, 11, 1, tzinfo=UTC))
    )
    feature_store.apply(settings, redis_server.connection_string)
    backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
    store = feature_store.open_store(settings, redis_server.connection_string)
    summary = materialize(store, settings.offline)
    assert summary.entity_rows[TRANSACTION_VIEW] == generated.transactions
    catalog = load_catalog(settings.feature_repo)
    join_key, fields = catalog.transaction.join_key, list(catalog.transaction_fields)

    compared, mismatches = entity_mismatches(store, settings.offline)
    offline_tx = latest_rows(settings.offline.transactions_file, join_key)
    sample = sorted(offline_tx)[:: max(1, len(offline_tx) // 300)]
    online_tx = store.get_online_features(
        features=[f"{TRANSACTION_VIEW}:{n}" for n in fields],
        entity_rows=[{join_key: t} for t in sample],
    ).to_dict()
    for i, transaction_id in enumerate(sample):
        for name in fields:
            compared += 1
            if not same(offline_tx[transaction_id][name], online_tx[name][i]):
                mismatches.append(
                    (
                        "transaction",
                        transaction_id,
                        name,
                        offline_tx[transaction_id][name],
                        online_tx[name][i],
                    )
                )
    assert compared > 3000
    assert mismatches == []

    # The feature services resolve online too, request-time features included.
    vectors = feature_vectors(store, "fraud_v2", sample[:5])
    for vector in vectors:
        card = latest_rows(settings.offline.file("card_features"), "card_id")[vector["card_id"]]
        assert same(card["card_txn_count_24h"], vector["card_txn_count_24h"])
        expected_ratio = vector["amount"] / card["card_amount_mean_7d"]
        assert vector["amount_to_card_mean_7d"] == pytest.approx(expected_ratio, rel=1e-12)
        event_time_ms = cast(int, offline_tx[vector["transaction_id"]]["event_time_ms"])
        hour = datetime.fromtimestamp(event_time_ms / 1000, UTC).hour
        assert vector["hour_of_day_utc"] == hour
