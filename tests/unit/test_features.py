"""Each SPEC feature on small hand-made data: literal expected values, from the offline SQL and the pure semantics.

The pure semantics (`pipelines.features.semantics`) is the slow, obviously correct reference; the offline SQL
must agree with it everywhere (last test, on random data) and both must give the literal values SPEC implies.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from pipelines.features.catalog import load_catalog
from pipelines.features.semantics import evaluate
from tests.features_harness import (
    DAY,
    HOUR,
    MINUTE,
    SECOND,
    T0,
    as_events,
    as_labels,
    label,
    run_backfill,
    txn,
)

CATALOG = load_catalog()
CARD, MERCHANT, DEVICE, IP = (
    CATALOG.window_view(name) for name in ("card_features", "merchant_features", "device_features", "ip_features")
)
FEATURE = {f.name: f for f in CATALOG.window_features}


def both(tmp_path: Path, transactions, labels, entity, key, ts, name):  # type: ignore[no-untyped-def]
    """The value from the offline pipeline, checked equal to the pure semantics' value."""
    offline = run_backfill(tmp_path, transactions, labels).value(entity, key, ts, name)
    events = [e for e in as_events(transactions) if e.get(entity.join_key) == key]
    reference = evaluate(FEATURE[name], events, ts, as_labels(labels))
    if reference is None or offline is None:
        assert offline is None and reference is None, (offline, reference)
    else:
        assert offline == pytest.approx(reference, rel=1e-12), (offline, reference)
    return offline


def test_event_exactly_at_window_start_is_excluded(tmp_path: Path) -> None:
    rows = [txn("a", T0, amount=5), txn("b", T0 + HOUR - 1, amount=7), txn("c", T0 + HOUR, amount=11)]
    # At T0 + 1h the window is (T0, T0 + 1h]: "a" at T0 is out, "b" one millisecond later is in.
    assert both(tmp_path, rows, [], CARD, "c1", T0 + HOUR, "card_txn_count_1h") == 2
    assert both(tmp_path, rows, [], CARD, "c1", T0 + HOUR, "card_amount_sum_1h") == 18.0
    assert both(tmp_path, rows, [], CARD, "c1", T0 + HOUR - 1, "card_txn_count_1h") == 2
    assert both(tmp_path, rows, [], CARD, "c1", T0 + HOUR, "card_txn_count_24h") == 3
    assert both(tmp_path, rows, [], CARD, "c1", T0 + HOUR, "card_txn_count_10m") == 2


def test_ten_minute_and_seven_day_boundaries(tmp_path: Path) -> None:
    rows = [txn("a", T0, amount=100), txn("b", T0 + 10 * MINUTE, amount=1), txn("c", T0 + 7 * DAY, amount=3)]
    assert both(tmp_path, rows, [], CARD, "c1", T0 + 10 * MINUTE, "card_txn_count_10m") == 1
    # 7 days after "a", "a" has left the 7-day window: mean and max see "b" and "c" only.
    assert both(tmp_path, rows, [], CARD, "c1", T0 + 7 * DAY, "card_amount_mean_7d") == 2.0
    assert both(tmp_path, rows, [], CARD, "c1", T0 + 7 * DAY, "card_amount_max_7d") == 3.0
    assert both(tmp_path, rows, [], CARD, "c1", T0 + 10 * MINUTE, "card_amount_max_7d") == 100.0


def test_events_with_the_same_timestamp_get_the_same_values(tmp_path: Path) -> None:
    rows = [
        txn("a", T0, amount=1),
        txn("b", T0 + MINUTE, amount=2, merchant="m2"),
        txn("c", T0 + MINUTE, amount=4, merchant="m3"),
    ]
    offline = run_backfill(tmp_path, rows)
    card = offline.table(CARD)
    assert len(card) == 2  # one row per (card, timestamp)
    assert offline.value(CARD, "c1", T0 + MINUTE, "card_txn_count_10m") == 3
    assert offline.value(CARD, "c1", T0 + MINUTE, "card_amount_sum_1h") == 7.0
    assert offline.value(CARD, "c1", T0 + MINUTE, "card_distinct_merchants_24h") == 3
    # "Strictly before t": the peer at the same instant is not the previous transaction.
    assert offline.value(CARD, "c1", T0 + MINUTE, "card_seconds_since_prev_txn") == 60.0


def test_input_out_of_time_order_gives_the_same_values(tmp_path: Path) -> None:
    rows = [txn(f"t{i}", T0 + i * 7 * MINUTE, amount=i + 1.5, merchant=f"m{i % 3}") for i in range(30)]
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    ordered = run_backfill(tmp_path / "ordered", rows).table(CARD)
    unordered = run_backfill(tmp_path / "shuffled", shuffled).table(CARD)
    key = ["card_id", "event_timestamp"]
    left = ordered.sort_values(key).reset_index(drop=True)
    right = unordered.sort_values(key).reset_index(drop=True)
    assert len(left) == 30
    assert left.equals(right)


def test_first_event_of_a_card(tmp_path: Path) -> None:
    rows = [txn("a", T0, amount=42.5)]
    offline = run_backfill(tmp_path, rows)
    assert offline.value(CARD, "c1", T0, "card_seconds_since_prev_txn") is None
    assert offline.value(CARD, "c1", T0, "card_txn_count_24h") == 1
    assert offline.value(CARD, "c1", T0, "card_amount_mean_7d") == 42.5
    assert offline.value(CARD, "c1", T0, "card_amount_max_7d") == 42.5
    assert offline.value(MERCHANT, "m1", T0, "merchant_fraud_rate_30d") == 0.0


def test_seconds_since_previous_transaction(tmp_path: Path) -> None:
    rows = [txn("a", T0), txn("b", T0 + 90 * SECOND + 500)]
    assert both(tmp_path, rows, [], CARD, "c1", T0 + 90 * SECOND + 500, "card_seconds_since_prev_txn") == 90.5


def test_null_device_and_ip_update_no_device_or_ip_features(tmp_path: Path) -> None:
    rows = [
        txn("a", T0, card="c1", device="d1", ip="9.9.9.9"),
        txn("b", T0 + MINUTE, card="c2", device=None, ip=None),
        txn("c", T0 + 2 * MINUTE, card="c3", device="d1", ip="9.9.9.9"),
    ]
    offline = run_backfill(tmp_path, rows)
    assert len(offline.table(DEVICE)) == 2 and len(offline.table(IP)) == 2
    assert offline.value(DEVICE, "d1", T0 + 2 * MINUTE, "device_distinct_cards_24h") == 2
    assert offline.value(IP, "9.9.9.9", T0 + 2 * MINUTE, "ip_distinct_cards_24h") == 2
    assert offline.value(IP, "9.9.9.9", T0 + 2 * MINUTE, "ip_txn_count_1h") == 2
    # The card with no device still counts its own transactions, and distinct devices ignore the null.
    assert offline.value(CARD, "c2", T0 + MINUTE, "card_txn_count_1h") == 1
    assert offline.value(CARD, "c2", T0 + MINUTE, "card_distinct_devices_7d") == 0


def test_distinct_cards_count_each_card_once(tmp_path: Path) -> None:
    rows = [txn(f"t{i}", T0 + i * MINUTE, card=f"c{i % 3}", device="shared") for i in range(9)]
    assert both(tmp_path, rows, [], DEVICE, "shared", T0 + 8 * MINUTE, "device_distinct_cards_24h") == 3


def test_fraud_rate_sees_a_label_only_from_its_timestamp_on(tmp_path: Path) -> None:
    rows = [txn("a", T0), txn("b", T0 + 2 * DAY), txn("c", T0 + 3 * DAY), txn("d", T0 + 3 * DAY + 1)]
    labels = [label("a", T0 + 3 * DAY)]  # known fraud from T0 + 3 days exactly
    name = "merchant_fraud_rate_30d"
    assert both(tmp_path, rows, labels, MERCHANT, "m1", T0 + 2 * DAY, name) == 0.0  # not yet known
    assert both(tmp_path, rows, labels, MERCHANT, "m1", T0 + 3 * DAY, name) == pytest.approx(1 / 3)  # known at t
    assert both(tmp_path, rows, labels, MERCHANT, "m1", T0 + 3 * DAY + 1, name) == pytest.approx(1 / 4)


def test_fraud_rate_ignores_labels_that_arrive_after_the_window(tmp_path: Path) -> None:
    rows = [txn("a", T0), txn("b", T0 + 29 * DAY), txn("c", T0 + 30 * DAY), txn("d", T0 + 31 * DAY)]
    # "a" is found to be fraud only 30 days later, when it has just left the 30-day window.
    labels = [label("a", T0 + 30 * DAY)]
    name = "merchant_fraud_rate_30d"
    assert both(tmp_path, rows, labels, MERCHANT, "m1", T0 + 29 * DAY, name) == 0.0
    assert both(tmp_path, rows, labels, MERCHANT, "m1", T0 + 30 * DAY, name) == 0.0
    assert both(tmp_path, rows, labels, MERCHANT, "m1", T0 + 31 * DAY, name) == 0.0


def test_fraud_rate_genuine_labels_and_reversals(tmp_path: Path) -> None:
    rows = [txn("a", T0), txn("b", T0 + DAY), txn("c", T0 + 2 * DAY), txn("d", T0 + 5 * DAY)]
    labels = [
        label("a", T0 + DAY, is_fraud=False),  # confirmed genuine: never counts
        label("b", T0 + DAY + HOUR, is_fraud=True),  # chargeback ...
        label("b", T0 + 4 * DAY, is_fraud=False),  # ... reversed three days later
    ]
    name = "merchant_fraud_rate_30d"
    assert both(tmp_path, rows, labels, MERCHANT, "m1", T0 + 2 * DAY, name) == pytest.approx(1 / 3)
    assert both(tmp_path, rows, labels, MERCHANT, "m1", T0 + 5 * DAY, name) == 0.0


def test_mean_is_sum_over_count(tmp_path: Path) -> None:
    rows = [
        txn("a", T0, merchant="m9", amount=3),
        txn("b", T0 + HOUR, merchant="m9", amount=6),
        txn("c", T0 + 2 * HOUR, merchant="m9", amount=0),
    ]
    assert both(tmp_path, rows, [], MERCHANT, "m9", T0 + 2 * HOUR, "merchant_amount_mean_7d") == 3.0
    # (T0 + 1h, T0 + 2h] holds "c" only: "b" sits exactly on the excluded edge.
    assert both(tmp_path, rows, [], MERCHANT, "m9", T0 + 2 * HOUR, "merchant_txn_count_1h") == 1


@pytest.mark.parametrize("seed", [1, 2])
def test_offline_sql_equals_the_reference_everywhere(tmp_path: Path, seed: int) -> None:
    """Random events with many ties and labels: every feature of every offline row equals the reference."""
    rnd = random.Random(seed)
    rows = []
    for i in range(600):
        ts = T0 + rnd.randrange(0, 40 * DAY // MINUTE) * MINUTE  # whole minutes: plenty of ties
        rows.append(
            txn(
                f"t{i}",
                ts,
                card=f"c{rnd.randrange(12)}",
                merchant=f"m{rnd.randrange(5)}",
                amount=round(rnd.uniform(0, 300), 2),
                device=rnd.choice([None, "d1", "d2", "d3", "d4"]),
                ip=rnd.choice([None, "1.1.1.1", "2.2.2.2", "3.3.3.3"]),
                country=rnd.choice(["US", "GB", "FR"]),
            )
        )
    labels = [
        label(
            r["transaction_id"],
            T0 + rnd.randrange(-DAY // MINUTE, 45 * DAY // MINUTE) * MINUTE,
            rnd.random() < 0.5,
        )
        for r in rnd.sample(rows, 250)
    ]
    labels += [label(r["transaction_id"], T0 + 20 * DAY, False) for r in rnd.sample(rows, 40)]
    offline = run_backfill(tmp_path, rows, labels)
    events = as_events(rows)
    by_txn = as_labels(labels)
    checked = 0
    for view in CATALOG.window_views:
        table = offline.table(view)
        ms = table["event_timestamp"].astype("datetime64[ms, UTC]").astype("int64")
        history: dict[str, list] = {}
        for e in events:
            if e.get(view.join_key) is not None:
                history.setdefault(e.get(view.join_key), []).append(e)
        for (_, row), ts in zip(table.iterrows(), ms, strict=True):
            for feature in view.features:
                expected = evaluate(feature, history[row[view.join_key]], int(ts), by_txn)
                got = row[feature.name]
                if expected is None:
                    assert pd.isna(got), (view.view, feature.name, got)
                else:
                    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (view.view, feature.name, ts)
                checked += 1
    assert checked > 5000
