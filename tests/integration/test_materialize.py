"""The fast materializer against Feast's own, on real redis-servers: the same bytes, the same read-back, the same rule.

Feast (`FeatureStore.materialize`, local engine) and the fast path (`pipelines.fast_materialize`) each load the same
offline store into a Redis of their own; every key, hash field, value and TTL must be equal byte for byte. The same
holds on a real local three-master Redis Cluster (tests/redis_cluster.py), where the fast engine sends each slot's
rows to the master that owns it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from core.settings import Settings
from fraudserve import feature_store
from pipelines import online_layout
from pipelines.fast_materialize import SlotMapChanged, online_target, plan_views, write_view
from pipelines.features.catalog import load_catalog
from pipelines.generate import GenerateConfig, generate
from pipelines.materialize import materialize
from pipelines.offline.backfill import backfill
from tests.features_harness import HOUR, MINUTE, T0, run_backfill, txn
from tests.parity import entity_mismatches, latest_rows, same
from tests.redis_cluster import RedisCluster
from tests.redis_process import RedisProcess

CATALOG = load_catalog()
CARD = CATALOG.window_view("card_features")
TRANSACTION_VIEW, TRANSACTION_KEY = "transaction_features", CATALOG.transaction.join_key
PROJECT = b"fraudserve"


def dump(client: Any) -> dict[bytes, tuple[dict[bytes, bytes], int]]:
    """Every key of the database: its hash and its TTL (-1: none)."""
    return {key: (client.hgetall(key), client.ttl(key)) for key in client.scan_iter(count=10_000)}


# ----------------------------------------------------------------------------------------- vectorised encoders
def _feast_values(values: list[Any], value_type: ValueType, arrow_type: pa.DataType) -> list[bytes]:
    """Feast's own conversion, as its materialization calls it on an Arrow column."""
    column = pa.array(values, arrow_type).to_numpy(zero_copy_only=False)
    return [v.SerializeToString() for v in python_values_to_proto_values(column, value_type)]


def test_vectorised_encoders_build_feasts_bytes() -> None:
    rng = random.Random(5)
    edge_ints = [0, 1, -1, 127, 128, 16_383, 16_384, 2**31, -(2**63), 2**63 - 1]
    ints = [rng.choice([*edge_ints, rng.randint(-(2**63), 2**63 - 1)]) for _ in range(3000)]
    column = pa.array(ints, pa.int64())
    assert online_layout.encode_values(column, "int64").to_pylist() == _feast_values(ints, ValueType.INT64, pa.int64())
    # With nulls Feast goes through float64 (exact for counts); the encoder matches encode_value, exactly.
    with_nulls = [rng.choice([None, 0, 3, 2**40]) for _ in range(500)]
    encoded = online_layout.encode_values(pa.array(with_nulls, pa.int64()), "int64").to_pylist()
    assert encoded == _feast_values(with_nulls, ValueType.INT64, pa.int64())
    assert encoded == [online_layout.encode_value(v, "int64") for v in with_nulls]

    edge_doubles = [None, 0.0, -0.0, float("nan"), float("inf"), -float("inf"), 5e-324, 1.5]
    doubles = [rng.choice([*edge_doubles, rng.uniform(-1e9, 1e9)]) for _ in range(3000)]
    encoded = online_layout.encode_values(pa.array(doubles, pa.float64()), "float64").to_pylist()
    assert encoded == _feast_values(doubles, ValueType.DOUBLE, pa.float64())

    strings = [rng.choice([None, "", "a", "é", "US", "x" * 200, "y" * 20_000, "ü€𝄞"]) for _ in range(3000)]
    encoded = online_layout.encode_values(pa.array(strings, pa.string()), "string").to_pylist()
    assert encoded == _feast_values(strings, ValueType.STRING, pa.string())
    assert encoded == [online_layout.encode_value(v, "string") for v in strings]

    micros = [0, 1, -1, 999_999, 1_000_000, 1_762_000_000_123_456, -5_000_000_000_001]
    micros += [rng.randint(-(2**50), 2**52) for _ in range(2000)]
    expected = []
    for us in micros:
        ts = Timestamp()
        ts.FromDatetime(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us))  # as online_write_batch
        expected.append(ts.SerializeToString())
    assert online_layout.encode_timestamps(np.array(micros, dtype=np.int64)).to_pylist() == expected

    keys = ["c1", "", "é" * 300, "card_000042"]
    expected_keys = [
        serialize_entity_key(EntityKey(join_keys=["card_id"], entity_values=[Value(string_val=k)]), 3) + PROJECT
        for k in keys
    ]
    assert online_layout.entity_keys(PROJECT, "card_id", pa.array(keys)).to_pylist() == expected_keys


# ------------------------------------------------------------------------------------- Feast and fast, compared
@pytest.mark.timeout(300)
def test_fast_engine_writes_the_bytes_feast_writes(
    tmp_path: Path, redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    settings = Settings()
    generated = generate(
        tmp_path / "raw", GenerateConfig(seed=3, cards=150, days=10, end=datetime(2026, 11, 1, tzinfo=UTC))
    )
    feature_store.apply(settings, redis_server.connection_string)
    backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)

    feast_redis = RedisProcess(tmp_path / "redis-feast").start()
    try:
        feast_store = feature_store.open_store(settings, feast_redis.connection_string)
        by_feast = materialize(feast_store, settings.offline, engine="feast")
        fast_store = feature_store.open_store(settings, redis_server.connection_string)
        by_fast = materialize(fast_store, settings.offline, engine="fast")
        expected = dump(feast_redis.client())
    finally:
        feast_redis.stop()
    assert by_feast.engine == "feast" and by_fast.engine == "fast"
    assert by_fast.entity_rows == by_feast.entity_rows
    assert by_fast.entity_rows[TRANSACTION_VIEW] == generated.transactions
    assert by_fast.written == by_fast.entity_rows  # an empty Redis: every row is written

    actual = dump(redis_server.client())
    assert len(actual) == by_feast.rows
    assert actual.keys() == expected.keys()
    different = [key for key in expected if actual[key] != expected[key]]
    assert different == [], f"{len(different)} keys differ, e.g. {different[:1]}"

    # Feast's registry holds the interval, as after `feast materialize`.
    fast_store.refresh_registry()  # type: ignore[no-untyped-call]
    views = [*(fast_store.get_stream_feature_view(v.view) for v in CATALOG.window_views)]
    for view in [*views, fast_store.get_feature_view(TRANSACTION_VIEW)]:
        intervals = view.materialization_intervals
        assert (by_fast.start - timedelta(seconds=1), by_fast.end + timedelta(seconds=1)) in intervals

    # Read back through Feast's SDK: each entity's latest offline row.
    compared, mismatches = entity_mismatches(fast_store, settings.offline)
    offline_tx = latest_rows(settings.offline.transactions_file, TRANSACTION_KEY)
    sample = sorted(offline_tx)[:: max(1, len(offline_tx) // 200)]
    online_tx = fast_store.get_online_features(
        features=[f"{TRANSACTION_VIEW}:{n}" for n in CATALOG.transaction_fields],
        entity_rows=[{TRANSACTION_KEY: t} for t in sample],
    ).to_dict()
    for i, transaction_id in enumerate(sample):
        for name in CATALOG.transaction_fields:
            compared += 1
            if not same(offline_tx[transaction_id][name], online_tx[name][i]):
                mismatches.append((transaction_id, name, offline_tx[transaction_id][name], online_tx[name][i]))
    assert compared > 2000
    assert mismatches == []

    # Materializing the same span again writes nothing: every stored row is as new as the offline one.
    again = materialize(fast_store, settings.offline, engine="fast")
    assert sum(again.written.values()) == 0
    assert dump(redis_server.client()) == actual


# -------------------------------------------------------------------------------------- never overwrite newer
def _card_hash(client: Any, card: str) -> dict[bytes, bytes]:
    stored: dict[bytes, bytes] = client.hgetall(online_layout.entity_key(PROJECT, CARD.join_key, card))
    return stored


@pytest.mark.timeout(240)
@pytest.mark.parametrize("engine", ["fast", "feast"])
def test_an_older_row_never_overwrites_a_newer_one_in_redis(
    tmp_path: Path, redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch, engine: str
) -> None:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path))
    settings = Settings()
    events = [
        txn("t1", T0, card="c1", amount=10.0),
        txn("t2", T0 + 5 * MINUTE, card="c1", amount=20.0),
        txn("t3", T0 + MINUTE, card="c2", amount=30.0),
        txn("t4", T0 + 2 * MINUTE, card="c3", amount=40.0),
    ]
    offline = run_backfill(tmp_path, events)
    assert offline.layout == settings.offline
    feature_store.apply(settings, redis_server.connection_string)
    store = feature_store.open_store(settings, redis_server.connection_string)
    client: Any = redis_server.client()
    card_ts = online_layout.ts_field(CARD.view).encode()
    count_field = online_layout.feature_field(CARD.view, "card_txn_count_24h")

    # What the stream worker would have written: c1 one hour after its latest offline event (newer), c2 one hour
    # before its only offline event (older). c3 is not in Redis.
    newer = {card_ts: online_layout.encode_ts(T0 + HOUR), count_field: online_layout.encode_value(99, "int64")}
    older = {card_ts: online_layout.encode_ts(T0 - HOUR), count_field: online_layout.encode_value(77, "int64")}
    client.hset(online_layout.entity_key(PROJECT, CARD.join_key, "c1"), mapping=newer)
    client.hset(online_layout.entity_key(PROJECT, CARD.join_key, "c2"), mapping=older)

    summary = materialize(store, settings.offline, engine=engine)  # type: ignore[arg-type]
    assert summary.engine == engine
    assert _card_hash(client, "c1") == newer  # untouched: Redis held a newer row
    c2 = _card_hash(client, "c2")
    assert c2[card_ts] == online_layout.encode_ts(T0 + MINUTE)  # overwritten: Redis held an older row
    assert c2[count_field] == online_layout.encode_value(1, "int64")
    assert _card_hash(client, "c3")[card_ts] == online_layout.encode_ts(T0 + 2 * MINUTE)
    if engine == "fast":
        assert summary.written[CARD.view] == 2  # c2 and c3
    vectors = store.get_online_features(
        features=[f"{CARD.view}:card_txn_count_24h"], entity_rows=[{"card_id": c} for c in ("c1", "c2", "c3")]
    ).to_dict()
    assert vectors["card_txn_count_24h"] == [99, 1, 1]


# ------------------------------------------------------------------------------------------------------ CLI
@pytest.mark.timeout(240)
def test_cli_materialize_engines(tmp_path: Path, redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path))
    settings = Settings()
    run_backfill(tmp_path, [txn(f"t{i}", T0 + i * MINUTE, card=f"c{i % 3}") for i in range(20)])
    feature_store.apply(settings, redis_server.connection_string)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    environment.update(
        {"FRAUDSERVE_HOME": str(tmp_path), "FRAUDSERVE_REDIS": redis_server.connection_string, "COLUMNS": "200"}
    )
    outputs = {}
    for engine in ("feast", "fast"):
        done = subprocess.run(
            [sys.executable, "-m", "fraudserve", "features", "materialize", "--engine", engine],
            env=environment,
            capture_output=True,
            text=True,
            timeout=200,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs[engine] = done.stdout
    assert "materialized 26 entity rows" in outputs["feast"] and "(feast engine)" in outputs["feast"]
    assert "materialized 26 entity rows" in outputs["fast"]
    assert "(fast engine, 0 written)" in outputs["fast"]  # the Feast run before wrote every row already


# ------------------------------------------------------------------------------------------------ Redis Cluster
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One local three-master Redis Cluster for this module's cluster tests (flushed by each)."""
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as started:
        yield started


def dump_cluster(cluster: RedisCluster) -> dict[int, dict[bytes, tuple[dict[bytes, bytes], int]]]:
    """Every key of every master (by port): its hash and its TTL."""
    return {port: dump(cluster.node_client(port)) for port in cluster.ports}


def merged(by_master: dict[int, dict[bytes, tuple[dict[bytes, bytes], int]]]) -> dict[bytes, Any]:
    return {key: value for keys in by_master.values() for key, value in keys.items()}


@pytest.mark.timeout(300)
def test_fast_engine_on_a_cluster_writes_the_bytes_feast_writes(
    tmp_path: Path, cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FRAUDSERVE_REDIS_TYPE", "redis_cluster")
    settings = Settings()
    generated = generate(
        tmp_path / "raw", GenerateConfig(seed=3, cards=150, days=10, end=datetime(2026, 11, 1, tzinfo=UTC))
    )
    feature_store.apply(settings, cluster.connection_string)
    backfill(generated.files["transactions_parquet"], generated.files["labels_parquet"], settings.offline)
    store = feature_store.open_store(settings, cluster.connection_string)
    cluster.flush()

    by_feast = materialize(store, settings.offline, engine="feast")
    expected = dump_cluster(cluster)
    cluster.flush()
    by_fast = materialize(store, settings.offline, engine="fast")
    actual = dump_cluster(cluster)
    assert by_feast.engine == "feast" and by_fast.engine == "fast"  # no fallback on a cluster
    assert by_fast.entity_rows == by_feast.entity_rows
    assert by_fast.written == by_fast.entity_rows  # an empty cluster: every row is written

    # Every master holds its third of the keys (CRC16 slots over three equal ranges), each key on the master Feast
    # put it on, with the same bytes.
    total = by_feast.rows
    assert all(len(keys) > total / 5 for keys in actual.values()), {p: len(k) for p, k in actual.items()}
    assert {port: keys.keys() for port, keys in actual.items()} == {
        port: keys.keys() for port, keys in expected.items()
    }
    flat_expected, flat_actual = merged(expected), merged(actual)
    assert len(flat_actual) == total
    different = [key for key in flat_expected if flat_actual[key] != flat_expected[key]]
    assert different == [], f"{len(different)} keys differ, e.g. {different[:1]}"

    # Read back through Feast's SDK on the cluster.
    compared, mismatches = entity_mismatches(store, settings.offline)
    assert compared > 1000
    assert mismatches == []

    # Again: nothing is newer, nothing is written.
    again = materialize(store, settings.offline, engine="fast")
    assert sum(again.written.values()) == 0
    assert dump_cluster(cluster) == actual

    # A stale slot map (as while slots are resharded): the masters answer MOVED, and the run says to rerun.
    target = online_target(store)
    try:
        assert target.owners is not None and len(target.masters) == 3
        target.owners = (target.owners + 1) % 3
        plan = next(p for p in plan_views(store) if p.name == CARD.view)
        with pytest.raises(SlotMapChanged, match="Rerun the materialize once the resharding has finished"):
            write_view(store, target, plan, by_fast.start - timedelta(seconds=1), by_fast.end + timedelta(seconds=1), 0)
    finally:
        target.close()
    assert dump_cluster(cluster) == actual  # MOVED: nothing was written


@pytest.mark.timeout(240)
def test_an_older_row_never_overwrites_a_newer_one_on_a_cluster(
    tmp_path: Path, cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAUDSERVE_HOME", str(tmp_path))
    monkeypatch.setenv("FRAUDSERVE_REDIS_TYPE", "redis_cluster")
    settings = Settings()
    cards = [f"c{i}" for i in range(40)]  # keys on every master
    events = [txn(f"t{i}", T0 + i * MINUTE, card=card, amount=10.0 + i) for i, card in enumerate(cards)]
    run_backfill(tmp_path, events)
    feature_store.apply(settings, cluster.connection_string)
    store = feature_store.open_store(settings, cluster.connection_string)
    cluster.flush()
    client: Any = cluster.client()
    card_ts = online_layout.ts_field(CARD.view).encode()
    count_field = online_layout.feature_field(CARD.view, "card_txn_count_24h")
    newer = {card_ts: online_layout.encode_ts(T0 + 2 * HOUR), count_field: online_layout.encode_value(99, "int64")}
    older = {card_ts: online_layout.encode_ts(T0 - HOUR), count_field: online_layout.encode_value(77, "int64")}
    newer_cards, older_cards = cards[::2], cards[1::3]
    older_cards = [c for c in older_cards if c not in newer_cards]
    for card in newer_cards:
        client.hset(online_layout.entity_key(PROJECT, CARD.join_key, card), mapping=newer)
    for card in older_cards:
        client.hset(online_layout.entity_key(PROJECT, CARD.join_key, card), mapping=older)
    holders = {port for port, keys in dump_cluster(cluster).items() if keys}
    assert len(holders) == 3

    summary = materialize(store, settings.offline, engine="fast")
    assert summary.engine == "fast"
    assert summary.written[CARD.view] == len(cards) - len(newer_cards)
    for i, card in enumerate(cards):
        stored = _card_hash(client, card)
        if card in newer_cards:
            assert stored == newer, card  # untouched: Redis held a newer row
        else:
            assert stored[card_ts] == online_layout.encode_ts(T0 + i * MINUTE), card
            assert stored[count_field] == online_layout.encode_value(1, "int64"), card
    client.close()
