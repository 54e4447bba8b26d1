"""Window views a data engineer declares in the Feast repo are computed by the stream worker, exactly.

A temporary copy of feature_repo/ gets a `user_views.py` beside `definitions.py`: a view keyed by a new entity on the
event's `merchant_category` (count, min, sum, count_distinct and fraud_rate), a second card view (`card_velocity`),
and a view keyed by an extra declared event field (`customer_id`). Events and labels go through the stream (out of
order within the lateness, duplicated, labels before their transactions); every online row must equal the pure
semantics (`pipelines.features.semantics.evaluate`) over the events, at the entity's latest event.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from pipelines.features.catalog import TRANSACTION_VIEW, Catalog, load_catalog
from pipelines.features.semantics import Event, Label, evaluate
from pipelines.online_layout import decode_ts, decode_value, entity_key, feature_field, ts_field
from pipelines.stream.log import RedisStreamLog
from pipelines.stream.updater import OnlineUpdater
from pipelines.stream.window_state import state_of
from tests.features_harness import MINUTE, T0
from tests.redis_process import RedisProcess
from tests.user_repo import user_repo as user_repo_at

PROJECT = "fraudserve"
REPO = Path(__file__).resolve().parents[2] / "feature_repo"

USER_VIEWS = """
from datetime import timedelta

from feast import Entity, Field, StreamFeatureView, ValueType
from feast.aggregation import Aggregation
from feast.types import Float64, Int64

from definitions import card, merchant, transactions_source  # noqa: F401

merchant_category = Entity(
    name="merchant_category", join_keys=["merchant_category"], value_type=ValueType.STRING, description="An MCC"
)
country = Entity(name="country", join_keys=["country"], value_type=ValueType.STRING, description="A country")
customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING, description="A customer")


def _fields(aggregations):
    return [
        Field(name=a.name, dtype=Int64 if a.function in ("count", "count_distinct") else Float64)
        for a in aggregations
    ]


_category = [
    Aggregation(column="transaction_id", function="count", time_window=timedelta(hours=1), name="mcc_txn_count_1h"),
    Aggregation(column="amount", function="min", time_window=timedelta(hours=1), name="mcc_amount_min_1h"),
    Aggregation(column="amount", function="sum", time_window=timedelta(minutes=30), name="mcc_amount_sum_30m"),
    Aggregation(column="card_id", function="count_distinct", time_window=timedelta(hours=2), name="mcc_cards_2h"),
    Aggregation(column="is_fraud", function="fraud_rate", time_window=timedelta(hours=3), name="mcc_fraud_rate_3h"),
]
merchant_category_features = StreamFeatureView(
    name="merchant_category_features",
    source=transactions_source,
    entities=[merchant_category],
    ttl=timedelta(days=1),
    timestamp_field="event_timestamp",
    aggregations=_category,
    schema=_fields(_category),
    online=True,
)

_velocity = [
    Aggregation(column="amount", function="min", time_window=timedelta(minutes=5), name="card_amount_min_5m"),
    Aggregation(column="transaction_id", function="count", time_window=timedelta(minutes=5), name="card_count_5m"),
]
card_velocity = StreamFeatureView(
    name="card_velocity",
    source=transactions_source,
    entities=[card],
    ttl=timedelta(days=1),
    timestamp_field="event_timestamp",
    aggregations=_velocity,
    schema=_fields(_velocity),
    online=True,
)

# Only a windowless feature: the history keeps the newest event older than the lateness, for the next one's gap.
_gap = [Aggregation(column="event_timestamp", function="seconds_since_prev", name="country_seconds_since_prev")]
country_gap = StreamFeatureView(
    name="country_gap",
    source=transactions_source,
    entities=[country],
    ttl=timedelta(days=1),
    timestamp_field="event_timestamp",
    aggregations=_gap,
    schema=_fields(_gap),
    online=True,
)

_customer = [
    Aggregation(column="transaction_id", function="count", time_window=timedelta(hours=1), name="customer_count_1h"),
    Aggregation(column="amount", function="max", time_window=timedelta(hours=1), name="customer_amount_max_1h"),
    Aggregation(column="is_fraud", function="fraud_rate", time_window=timedelta(hours=2), name="customer_fraud_2h"),
]
customer_features = StreamFeatureView(
    name="customer_features",
    source=transactions_source,
    entities=[customer],
    ttl=timedelta(days=1),
    timestamp_field="event_timestamp",
    aggregations=_customer,
    schema=_fields(_customer),
    online=True,
)
"""


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """feature_repo/ with the user's views and an extra event field, `customer_id`."""
    target = tmp_path_factory.mktemp("user-repo") / "feature_repo"
    yield user_repo_at(target, files={"user_views.py": USER_VIEWS}, extra_fields={"customer_id": "String"})


@pytest.fixture
def catalog(user_repo: Path, monkeypatch: pytest.MonkeyPatch) -> Catalog:
    monkeypatch.setenv("FRAUDSERVE_FEATURE_REPO", str(user_repo))
    return load_catalog(user_repo)


def make_events(seed: int, count: int = 400) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Transactions (stream form: `ts_ms`) over ~5 hours, and labels, some known before their transaction."""
    rnd = random.Random(seed)
    transactions: list[dict[str, Any]] = []
    ts = T0
    for i in range(count):
        ts += rnd.randrange(0, 90) * 1000  # ties happen (0 s apart)
        transactions.append(
            {
                "transaction_id": f"t{i}",
                "card_id": f"c{rnd.randrange(8)}",
                "merchant_id": f"m{rnd.randrange(5)}",
                "device_id": rnd.choice([None, "d1", "d2", "d3"]),
                "ip_address": rnd.choice([None, "1.1.1.1", "2.2.2.2"]),
                "amount": round(rnd.uniform(1, 500), 2),
                "currency": "USD",
                "merchant_category": rnd.choice(["5411", "5812", "4829"]),
                "country": rnd.choice(["US", "GB", "FR"]),
                "customer_id": rnd.choice([None, "u1", "u2", "u3", "u4"]),
                "ts_ms": ts,
            }
        )
    labels = [
        {"transaction_id": t["transaction_id"], "is_fraud": rnd.random() < 0.4, "ts_ms": t["ts_ms"] + d}
        for t in rnd.sample(transactions, 120)
        for d in [rnd.randrange(-10, 120) * MINUTE]
    ]
    return transactions, labels


def shuffled_within(transactions: list[dict[str, Any]], seed: int, jitter_ms: int) -> list[dict[str, Any]]:
    """The events out of order, each by at most `jitter_ms` (inside the lateness)."""
    rnd = random.Random(seed)
    return sorted(transactions, key=lambda t: t["ts_ms"] + rnd.uniform(0, jitter_ms))


def expected_and_online(
    client: redis.Redis, catalog: Catalog, transactions: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> tuple[dict[tuple[str, str, str], Any], dict[tuple[str, str, str], Any]]:
    """Every window feature of every entity seen: the pure semantics' value at its latest event, and the online one."""
    by_txn: dict[str, list[Label]] = {}
    for label in labels:
        tid = label["transaction_id"]
        by_txn.setdefault(tid, []).append(Label(tid, label["is_fraud"], label["ts_ms"]))
    expected: dict[tuple[str, str, str], Any] = {}
    online: dict[tuple[str, str, str], Any] = {}
    raw: Any = client
    for view in catalog.window_views:
        histories: dict[str, list[Event]] = {}
        for t in transactions:
            key = t.get(view.join_key)
            if key is not None:
                fields = {k: v for k, v in t.items() if k not in ("transaction_id", "ts_ms")}
                histories.setdefault(key, []).append(Event(t["transaction_id"], t["ts_ms"], fields))
        for key, events in histories.items():
            latest = max(e.ts_ms for e in events)
            row = entity_key(PROJECT.encode(), view.join_key, key)
            assert decode_ts(raw.hget(row, ts_field(view.view))) == latest / 1000, (view.view, key)
            for feature in view.features:
                expected[view.view, key, feature.name] = evaluate(feature, events, latest, by_txn)
                online[view.view, key, feature.name] = decode_value(
                    raw.hget(row, feature_field(view.view, feature.name))
                )
    return expected, online


def assert_same(expected: dict[tuple[str, str, str], Any], online: dict[tuple[str, str, str], Any]) -> None:
    assert expected.keys() == online.keys()
    wrong = [
        (k, expected[k], online[k])
        for k in expected
        if (expected[k] is None) != (online[k] is None)
        or (expected[k] is not None and online[k] != pytest.approx(expected[k], rel=1e-12))
    ]
    assert wrong[:10] == []


def test_the_catalog_holds_the_users_views(catalog: Catalog) -> None:
    names = {v.view for v in catalog.window_views}
    assert {"merchant_category_features", "card_velocity", "customer_features", "card_features"} <= names
    card = next(e for e in catalog.window_entities if e.name == "card")
    assert [v.view for v in catalog.views_of(card)] == ["card_features", "card_velocity"]
    assert catalog.extra_fields == {"customer_id": "string"}


def test_the_updater_computes_every_declared_view(catalog: Catalog, redis_server: RedisProcess) -> None:
    transactions, labels = make_events(seed=3)
    client = redis_server.client()
    updater = OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=catalog)
    stream = shuffled_within(transactions, seed=4, jitter_ms=4 * MINUTE)
    rnd = random.Random(5)
    stream += rnd.sample(transactions, 50)  # redelivered
    pending = [lb for lb in labels if rnd.random() < 0.3]  # these arrive before their transactions
    rest = [lb for lb in labels if lb not in pending]
    updater.apply([], pending)
    batches = [stream[start : start + 37] for start in range(0, len(stream), 37)]
    for i, batch in enumerate(batches):
        updater.apply(batch, rest[i :: len(batches)])
    expected, online = expected_and_online(client, catalog, transactions, labels)
    assert len({k[0] for k in expected}) == len(catalog.window_views)
    assert any(v not in (None, 0, 0.0) for k, v in expected.items() if k[2] == "mcc_fraud_rate_3h")
    assert any(v not in (None, 0, 0.0) for k, v in expected.items() if k[2] == "customer_fraud_2h")
    assert_same(expected, online)

    # The transaction's own row holds every declared field, the extra one included.
    raw: Any = client
    row = entity_key(PROJECT.encode(), "transaction_id", "t7")
    for name in catalog.transaction_fields:
        want = transactions[7]["ts_ms"] if name == "event_time_ms" else transactions[7][name]
        assert decode_value(raw.hget(row, feature_field(TRANSACTION_VIEW, name))) == want, name
    # Window state keeps what the entity's views read, no more: a customer's window member is its transaction id
    # and amount; distinct counts keep one entry per value (a category's cards), not one per event.
    member = raw.zrange("fraudserve:{customer:u1}:win", 0, 0)[0]
    assert len(json.loads(member)) == 2
    cards = {t["card_id"] for t in transactions if t["merchant_category"] == "5411"}
    assert raw.zcard("fraudserve:{merchant_category:5411}:seen:card_id") <= len(cards)


def test_rows_the_script_writes_are_the_bytes_feast_writes(catalog: Catalog, redis_server: RedisProcess) -> None:
    """On a single Redis the fold script encodes Feast's rows itself (ValueProto, Timestamp); a cluster's updater
    writes them from Python with Feast's own protobuf classes. The same events, both ways: every row byte-equal."""
    transactions, labels = make_events(seed=11, count=300)
    stream = shuffled_within(transactions, seed=12, jitter_ms=4 * MINUTE)
    clients: list[Any] = [redis_server.client(), redis.Redis(port=redis_server.port, db=1)]
    for client, in_script in zip(clients, (True, False), strict=True):
        updater = OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=catalog, rows_in_script=in_script)
        for start in range(0, len(stream), 60):
            updater.apply(stream[start : start + 60], labels[start // 5 : (start + 60) // 5])
    rows = [
        {key: client.hgetall(key) for key in client.scan_iter(count=1000) if not key.startswith(b"fraudserve")}
        for client in clients
    ]
    assert len(rows[0]) > 100
    assert rows[0].keys() == rows[1].keys()
    differ = [key for key in rows[0] if rows[0][key] != rows[1][key]]
    assert differ == []
    nulls = sum(1 for row in rows[0].values() for value in row.values() if value == b"")
    assert nulls > 0  # null features (a first event's seconds_since_prev, nullable columns) are Feast's empty Value
    # Row keys are built from the key's prefix, not by Feast's serializer: the same bytes.
    for join_key, value in [("card_id", "c1"), ("merchant_category", "5411"), ("customer_id", "u-\u00e9\u4e2d" * 40)]:
        assert updater._row_key(join_key, value) == entity_key(PROJECT.encode(), join_key, value)


def test_an_entity_with_only_a_windowless_feature_keeps_its_previous_event(
    catalog: Catalog, redis_server: RedisProcess
) -> None:
    transactions = [
        {**make_events(seed=1)[0][0], "transaction_id": f"jp{i}", "country": "JP", "ts_ms": T0 + i * 3_600_000}
        for i in range(4)
    ]
    client = redis_server.client()
    updater = OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=catalog)
    for event in transactions:  # an hour apart: far beyond the lateness, the country's whole retention
        updater.apply([event], [])
        updater.apply([event], [])  # redelivered: recomputed at the same instant, the previous event still needed
    expected, online = expected_and_online(client, catalog, transactions, [])
    assert online["country_gap", "JP", "country_seconds_since_prev"] == 3600.0
    assert_same(expected, online)
    raw: Any = client
    # No event is kept for a windowless feature: the state holds the latest time and the one before it.
    assert not raw.exists("fraudserve:{country:JP}:win")
    state = state_of(raw.hget("fraudserve:{country:JP}:st", "b"))
    assert (state["t"], state["previous"]) == (transactions[-1]["ts_ms"], transactions[-2]["ts_ms"])


def test_a_worker_killed_mid_stream_loses_nothing_of_the_users_views(
    catalog: Catalog, user_repo: Path, redis_server: RedisProcess, tmp_path: Path
) -> None:
    transactions, labels = make_events(seed=11, count=1500)
    client = redis_server.client()
    log = RedisStreamLog(client)
    log.append("label", labels[:20])  # before their transactions
    log.append("transaction", shuffled_within(transactions, seed=12, jitter_ms=3 * MINUTE))
    log.append("label", labels[20:])
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSERVE_")}
    environment.update(
        {
            "FRAUDSERVE_HOME": str(tmp_path / "home"),
            "FRAUDSERVE_REDIS": redis_server.connection_string,
            "FRAUDSERVE_FEATURE_REPO": str(user_repo),
            "FRAUDSERVE_STREAM_CLAIM_IDLE_MS": "1500",
        }
    )
    victim = subprocess.Popen(
        [sys.executable, "-m", "fraudserve", "stream", "run"], env=environment, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    raw: Any = client
    deadline = time.monotonic() + 90
    while int(raw.hget("fraudserve:stream:stats", "processed") or 0) < 300 and time.monotonic() < deadline:
        assert victim.poll() is None, "the worker died on its own"
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its process group, mid-stream
    victim.wait()
    processed = int(raw.hget("fraudserve:stream:stats", "processed") or 0)
    assert 0 < processed < len(transactions) + len(labels)
    replacement = subprocess.run(
        [sys.executable, "-m", "fraudserve", "stream", "run", "--until-idle", "3"], env=environment,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert replacement.returncode == 0, replacement.stderr
    expected, online = expected_and_online(client, catalog, transactions, labels)
    assert_same(expected, online)


def test_histories_and_labels_stored_before_the_upgrade_still_count(
    catalog: Catalog, redis_server: RedisProcess
) -> None:
    """Entries of the old fixed layout and the old transaction -> merchant map, left by a worker of the last release."""
    transactions = make_events(seed=21)[0][:60]
    for t in transactions:
        t.update(card_id="c1", merchant_id="m1")
    before, after = transactions[:30], transactions[30:]
    client = redis_server.client()
    raw: Any = client
    for t in before:
        old = [t["ts_ms"], t["amount"], t["card_id"], t["merchant_id"], t["country"], t["device_id"], t["ip_address"]]
        raw.hset("fraudserve:{card:c1}:events", t["transaction_id"], json.dumps(old))
        raw.hset("fraudserve:{merchant:m1}:events", t["transaction_id"], json.dumps(old))
        raw.hset("fraudserve:txn-merchant", t["transaction_id"], "m1")
    known = after[0]["ts_ms"]
    labels = [{"transaction_id": t["transaction_id"], "is_fraud": True, "ts_ms": known} for t in before[-5:]]
    updater = OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=catalog)
    updater.apply(after[:10], labels)
    updater.apply(after[10:], [])
    expected, online = expected_and_online(client, catalog, transactions, labels)
    built_in = {k for k in expected if k[0] in ("card_features", "merchant_features")}
    assert_same({k: expected[k] for k in built_in}, {k: online[k] for k in built_in})
    assert online["merchant_features", "m1", "merchant_fraud_rate_30d"] == 5 / 60
    assert raw.keys("fraudserve:pending-labels:*") == []


@pytest.mark.parametrize("seed", [31, 32, 33])
def test_small_batches_relabels_and_disorder_stay_exact(
    catalog: Catalog, redis_server: RedisProcess, seed: int
) -> None:
    """The incremental state against the pure semantics, randomized: batches of one to four events, disorder within
    the lateness, redeliveries, labels before and after their transactions, verdicts changed by a later label."""
    transactions, labels = make_events(seed=seed, count=300)
    rnd = random.Random(seed)
    flips = [
        {**lb, "is_fraud": not lb["is_fraud"], "ts_ms": lb["ts_ms"] + rnd.randrange(1, 90) * MINUTE}
        for lb in rnd.sample(labels, 30)
    ]
    every_label = labels + flips
    rnd.shuffle(every_label)
    stream = shuffled_within(transactions, seed=seed + 100, jitter_ms=4 * MINUTE)
    stream += rnd.sample(transactions, 40)
    client = redis_server.client()
    updater = OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=catalog)
    position = 0
    label_position = 0
    while position < len(stream) or label_position < len(every_label):
        size = rnd.randrange(1, 5)
        updater.apply(stream[position : position + size], every_label[label_position : label_position + 2])
        position += size
        label_position += 2
    expected, online = expected_and_online(client, catalog, transactions, every_label)
    assert_same(expected, online)


def test_an_entity_with_a_long_history_is_exact_event_by_event(catalog: Catalog, redis_server: RedisProcess) -> None:
    """One category with thousands of events in its windows, then one event per batch (the steady low-rate case,
    where the recomputing updater re-read the whole history every time)."""
    transactions, _ = make_events(seed=41, count=3000)
    for t in transactions:
        t["merchant_category"] = "5999"
    client = redis_server.client()
    updater = OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=catalog)
    updater.apply(transactions[:2900], [])
    for event in transactions[2900:]:
        updater.apply([event], [])
    expected, online = expected_and_online(client, catalog, transactions, [])
    category = {k: v for k, v in expected.items() if k[0] == "merchant_category_features"}
    assert category[("merchant_category_features", "5999", "mcc_txn_count_1h")] > 40
    assert_same(category, {k: online[k] for k in category})
    assert_same(expected, online)


def test_a_changed_declaration_refolds_the_kept_events(
    catalog: Catalog, redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events folded under the built-in views, then a data engineer adds `card_velocity` to the card entity: the
    card's kept window events are folded again under the new declaration, so its new features count them too."""
    transactions, labels = make_events(seed=51, count=300)
    client = redis_server.client()
    monkeypatch.setenv("FRAUDSERVE_FEATURE_REPO", str(REPO))
    built_in = load_catalog(REPO)
    OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=built_in).apply(transactions[:200], labels)
    OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=catalog).apply(transactions[200:], [])
    expected, online = expected_and_online(client, catalog, transactions, labels)
    card = {k for k in expected if k[0] in ("card_features", "card_velocity", "merchant_features")}
    assert any(k[0] == "card_velocity" for k in card)
    assert_same({k: expected[k] for k in card}, {k: online[k] for k in card})


def test_a_label_folded_between_its_transactions_routing_and_fold_counts(
    catalog: Catalog, redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers' race: one has routed a transaction (its label keys written) but not folded it yet when the other
    folds a label for it. Unlabelled events keep no label record; the label's own record waits for the event."""
    transactions = make_events(seed=61, count=150)[0][:40]
    for t in transactions:
        t["merchant_id"] = "m1"
    held = transactions.pop(30)  # arrives last, older than the merchant's latest event (inside the windows)
    client = redis_server.client()
    raw: Any = client
    first = OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=catalog)
    first.apply(transactions, [])
    assert raw.exists("fraudserve:{merchant:m1}:lab") == 0
    monkeypatch.setattr(first, "_fold", lambda *args: None)  # routed, not folded: the worker is slow
    first.apply([held], [])
    labels = [{"transaction_id": held["transaction_id"], "is_fraud": True, "ts_ms": held["ts_ms"] + MINUTE}]
    OnlineUpdater(client, PROJECT, timedelta(minutes=5), catalog=catalog).apply([], labels)
    monkeypatch.undo()
    first.apply([held], [])
    expected, online = expected_and_online(client, catalog, [*transactions, held], labels)
    assert expected["merchant_features", "m1", "merchant_fraud_rate_30d"] == 1 / 40
    assert_same(expected, online)
    assert raw.hkeys("fraudserve:{merchant:m1}:lab") == [held["transaction_id"].encode()]


def test_a_worker_reads_more_under_a_backlog_and_stays_exact(catalog: Catalog, redis_server: RedisProcess) -> None:
    """Under a backlog a worker's reads grow (full ones: x READ_GROWTH up to max_batch) and fall back to `batch`
    once the backlog is gone; values stay exact with labels interleaved, disorder and redeliveries."""
    from pipelines.stream.worker import READ_GROWTH, Worker

    transactions, labels = make_events(seed=21, count=900)
    rnd = random.Random(21)
    stream = shuffled_within(transactions, seed=22, jitter_ms=4 * MINUTE) + rnd.sample(transactions, 30)
    client = redis_server.client()
    log = RedisStreamLog(client)
    log.append("label", labels[:30])  # before their transactions
    for start in range(0, len(stream), 100):
        log.append("transaction", stream[start : start + 100])
        log.append("label", labels[30 + start // 10 : 30 + (start + 100) // 10])
    log.append("label", labels[30 + len(stream) // 10 :])
    worker = Worker(client, PROJECT, "w", timedelta(minutes=5), batch=3, max_batch=3 * READ_GROWTH**2)
    sizes: list[tuple[int, int]] = []  # (asked, got)
    read = worker.stream.read

    def recorded(consumer: str, count: int, block_ms: int) -> Any:
        entries = read(consumer, count, block_ms)
        sizes.append((count, len(entries)))
        return entries

    worker.stream.read = recorded
    assert worker.run(until_idle_s=0.2) == len(stream) + len(labels)
    asked = [count for count, _ in sizes]
    assert asked[:4] == [3, 12, 48, 48]
    assert asked[-1] == 3  # the stream drained: back to small reads
    expected, online = expected_and_online(client, catalog, transactions, labels)
    assert_same(expected, online)
