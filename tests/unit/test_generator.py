"""The synthetic event generator: determinism, validity of every event, fraud patterns and late labels."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.events import (
    COUNTRY_RE,
    CURRENCY_RE,
    LABEL_SCHEMA,
    MCC_RE,
    TRANSACTION_ID_MAX_LEN,
    TRANSACTION_SCHEMA,
    is_rfc3339,
)
from pipelines.generate import FILE_NAMES, GenerateConfig, GenerateSummary, generate

END = datetime(2026, 11, 15, tzinfo=UTC)
CONFIG = GenerateConfig(seed=11, cards=2000, days=14, end=END)
JSON_TIME_FORMAT = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
FRAUD_PATTERNS = ("card_testing", "account_takeover", "compromised_merchant", "ring")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    out = tmp_path_factory.mktemp("gen")
    return out, generate(out, CONFIG)


@pytest.fixture(scope="module")
def tx(run: tuple[Path, GenerateSummary]) -> pd.DataFrame:
    """Transactions joined with their ground truth."""
    out, _ = run
    frame: pd.DataFrame = pq.read_table(out / "transactions.parquet").to_pandas()
    truth: pd.DataFrame = pq.read_table(out / "ground_truth.parquet").to_pandas()
    return frame.merge(truth, on="transaction_id", how="left", validate="one_to_one")


@pytest.fixture(scope="module")
def labels(run: tuple[Path, GenerateSummary]) -> pd.DataFrame:
    frame: pd.DataFrame = pq.read_table(run[0] / "labels.parquet").to_pandas()
    return frame


def _bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in FILE_NAMES.values()}


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_same_config_gives_identical_files_and_another_seed_does_not(
    run: tuple[Path, GenerateSummary], tmp_path: Path
) -> None:
    out, _ = run
    again = generate(tmp_path / "again", CONFIG)
    other = generate(tmp_path / "other", replace(CONFIG, seed=12))
    first = _bytes(out)
    assert set(first) == set(FILE_NAMES.values())
    assert _bytes(tmp_path / "again") == first
    other_bytes = _bytes(tmp_path / "other")
    assert all(other_bytes[name] != first[name] for name in first)
    assert again.transactions == run[1].transactions
    assert other.transactions != run[1].transactions


def test_write_size_does_not_change_the_events(tmp_path: Path) -> None:
    config = replace(CONFIG, cards=300, days=3)
    generate(tmp_path / "big", config)
    generate(tmp_path / "small", replace(config, rows_per_write=97))
    for name in ("transactions.jsonl", "labels.jsonl"):
        assert (tmp_path / "big" / name).read_bytes() == (tmp_path / "small" / name).read_bytes()
    big = pq.read_table(tmp_path / "big" / "transactions.parquet")
    small = pq.read_table(tmp_path / "small" / "transactions.parquet")
    assert big.equals(small)
    assert pq.ParquetFile(tmp_path / "small" / "transactions.parquet").num_row_groups > 3


def test_card_chunks_give_valid_unique_events(tmp_path: Path) -> None:
    summary = generate(tmp_path, replace(CONFIG, cards=500, days=2, cards_per_chunk=128))
    table = pq.read_table(tmp_path / "transactions.parquet")
    assert table.num_rows == summary.transactions > 0
    assert pc.count_distinct(table["transaction_id"]).as_py() == table.num_rows
    assert pc.count_distinct(table["card_id"]).as_py() > 300
    ts = table["event_timestamp"].cast(pa.int64()).to_numpy()
    assert (ts[1:] >= ts[:-1]).all()


def test_summary_describes_the_files(run: tuple[Path, GenerateSummary], tx: pd.DataFrame) -> None:
    out, summary = run
    assert summary.files == {key: out / name for key, name in FILE_NAMES.items()}
    assert all(path.is_file() for path in summary.files.values())
    assert summary.transactions == len(tx)
    assert summary.labels == pq.read_metadata(out / "labels.parquet").num_rows
    assert summary.fraud_transactions == int(tx["is_fraud"].sum())
    assert summary.fraud_rate == pytest.approx(summary.fraud_transactions / summary.transactions)
    assert summary.pattern_counts == {p: int(c) for p, c in tx["pattern"].value_counts().items()}
    assert summary.start == END - timedelta(days=14)
    assert summary.end == END
    assert summary.seconds > 0


@pytest.mark.parametrize("config", [GenerateConfig(), CONFIG, replace(CONFIG, seed=3, cards=5000, days=7)])
def test_fraud_rate_between_half_and_two_percent(config: GenerateConfig, tmp_path: Path) -> None:
    summary = generate(tmp_path, config)
    assert 0.005 <= summary.fraud_rate <= 0.02
    assert all(summary.pattern_counts[p] > 0 for p in FRAUD_PATTERNS)
    assert all(summary.incidents[p] > 0 for p in FRAUD_PATTERNS)


def test_every_transaction_follows_the_event_rules(run: tuple[Path, GenerateSummary]) -> None:
    out, _ = run
    table = pq.read_table(out / "transactions.parquet")
    assert table.schema.equals(TRANSACTION_SCHEMA)
    for name in (
        "transaction_id",
        "card_id",
        "merchant_id",
        "amount",
        "currency",
        "merchant_category",
        "country",
    ):
        assert table[name].null_count == 0, name
    assert table["event_timestamp"].null_count == 0
    ids = table["transaction_id"]
    assert pc.count_distinct(ids).as_py() == table.num_rows
    lengths = pc.utf8_length(ids)
    assert pc.min(lengths).as_py() >= 1
    assert pc.max(lengths).as_py() <= TRANSACTION_ID_MAX_LEN
    for name in ("card_id", "merchant_id", "device_id", "ip_address"):
        assert pc.min(pc.utf8_length(table[name])).as_py() >= 1, name
    for name, pattern in (("currency", CURRENCY_RE), ("merchant_category", MCC_RE), ("country", COUNTRY_RE)):
        assert pc.all(pc.match_substring_regex(table[name], pattern)).as_py(), name
    amounts = table["amount"].to_numpy()
    assert all(math.isfinite(a) and a >= 0 for a in amounts.tolist())
    ts = table["event_timestamp"].cast(pa.int64()).to_numpy()
    start_ms = CONFIG.end_ms - 14 * 86_400_000
    assert ts.min() >= start_ms
    assert ts.max() < CONFIG.end_ms
    assert (ts[1:] >= ts[:-1]).all(), "transactions are in event-time order"


def test_ids_have_their_formats(tx: pd.DataFrame) -> None:
    assert tx["transaction_id"].str.fullmatch(r"tx_\d{4}_\d{7}").all()
    assert tx["card_id"].str.fullmatch(r"card_\d{6}").all()
    assert tx["merchant_id"].str.fullmatch(r"m_\d{5}").all()
    assert tx["device_id"].dropna().str.fullmatch(r"dev_[0-9a-f]{12}").all()
    octets = tx["ip_address"].dropna().str.split(".", expand=True).astype(int)
    assert octets.shape[1] == 4
    assert ((octets >= 0) & (octets <= 255)).all().all()


def test_currency_follows_country(tx: pd.DataFrame) -> None:
    pairs = tx.groupby("country")["currency"].unique()
    assert all(len(currencies) == 1 for currencies in pairs)
    expected = {"US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "CA": "CAD", "JP": "JPY", "IN": "INR"}
    currency = {country: currencies[0] for country, currencies in pairs.items()}
    assert all(currency[c] == cur for c, cur in expected.items() if c in currency)
    assert tx["country"].value_counts().index[0] == "US"
    assert tx["merchant_category"].isin(["5411", "5812", "5814", "5541"]).mean() > 0.4
    cents = (tx["amount"] * 100).round()
    assert ((cents / 100 - tx["amount"]).abs() < 1e-9).all()
    assert (tx.loc[tx["currency"] == "JPY", "amount"] % 1 == 0).all()


def test_null_device_and_ip_are_present_but_rare(tx: pd.DataFrame) -> None:
    genuine = tx[tx["pattern"] == "none"]
    no_device = genuine["device_id"].isna().mean()
    no_ip = genuine["ip_address"].isna().mean()
    assert 0.01 < no_device < 0.1
    assert 0.01 < no_ip < 0.1
    assert (genuine["device_id"].isna() & genuine["ip_address"].isna()).sum() > 0
    assert (genuine["device_id"].isna() & genuine["ip_address"].notna()).sum() > 0


def test_devices_and_ips_are_shared_in_genuine_traffic(tx: pd.DataFrame) -> None:
    genuine = tx[tx["pattern"] == "none"]
    cards_per_device = genuine.groupby("device_id")["card_id"].nunique()
    cards_per_ip = genuine.groupby("ip_address")["card_id"].nunique()
    assert (cards_per_device > 1).sum() > 10
    assert (cards_per_device == 1).mean() > 0.8, "most devices belong to one card"
    assert (cards_per_ip > 1).sum() > 10
    assert cards_per_ip.max() >= 10, "office / carrier NATs are shared by many cards"
    devices_per_card = genuine.groupby("card_id")["device_id"].nunique()
    assert devices_per_card.max() <= 2


def test_each_fraud_pattern_is_present_and_labeled_fraud(tx: pd.DataFrame) -> None:
    counts = tx["pattern"].value_counts()
    assert all(counts.get(p, 0) > 0 for p in FRAUD_PATTERNS)
    assert set(counts.index) <= {"none", *FRAUD_PATTERNS}
    assert (tx["is_fraud"] == (tx["pattern"] != "none")).all()


def test_fraud_patterns_have_their_shapes(tx: pd.DataFrame) -> None:
    genuine = tx[tx["pattern"] == "none"]
    testing = tx[tx["pattern"] == "card_testing"]
    small = testing[testing["amount"] <= 5.0]
    assert len(small) >= 0.9 * len(testing)
    assert small["amount"].min() >= 0.5
    bursts = small.groupby("card_id").agg(n=("amount", "size"), first=("event_timestamp", "min"))
    assert bursts["n"].min() >= 5
    assert bursts["n"].max() <= 20 * 2

    takeover = tx[tx["pattern"] == "account_takeover"]
    assert takeover["amount"].median() > 5 * genuine["amount"].median()
    assert takeover["device_id"].notna().all()
    assert not set(takeover["device_id"]) & set(genuine["device_id"].dropna())
    assert takeover["merchant_category"].isin(["5732", "5944", "4829"]).all()

    ring = tx[tx["pattern"] == "ring"]
    assert ring.groupby("device_id")["card_id"].nunique().max() >= 3
    assert ring["device_id"].nunique() <= 6 * max(1, CONFIG.cards // 25_000)

    compromised = tx[tx["pattern"] == "compromised_merchant"]
    per_day = tx.assign(day=tx["event_timestamp"].dt.floor("D"))
    hit = per_day[per_day["merchant_id"].isin(compromised["merchant_id"])]
    share = hit.groupby(["merchant_id", "day"])["is_fraud"].mean()
    assert share.max() >= 0.25, "a compromised merchant's traffic is substantially fraudulent"
    assert compromised["card_id"].nunique() > 0.8 * len(compromised), "many different cards"


def test_labels_arrive_late_and_before_the_end(
    run: tuple[Path, GenerateSummary], tx: pd.DataFrame, labels: pd.DataFrame
) -> None:
    assert pq.read_schema(run[0] / "labels.parquet").equals(LABEL_SCHEMA)
    assert labels["transaction_id"].is_unique
    joined = labels.merge(tx, on="transaction_id", how="left", suffixes=("", "_truth"))
    assert joined["event_timestamp"].notna().all(), "every label refers to a transaction"
    delay = joined["label_timestamp"] - joined["event_timestamp"]
    assert delay.min() >= pd.Timedelta(days=1)
    assert delay.max() <= pd.Timedelta(days=30)
    assert (joined["label_timestamp"] < pd.Timestamp(END)).all()
    assert (joined["is_fraud"] == joined["is_fraud_truth"]).all()


def test_some_genuine_confirmed_some_never_labeled(tx: pd.DataFrame, labels: pd.DataFrame) -> None:
    assert (~labels["is_fraud"]).sum() > 0
    assert labels["is_fraud"].sum() > 0
    labeled = tx["transaction_id"].isin(labels["transaction_id"])
    assert (~labeled).sum() > 0.5 * len(tx)
    assert (~labeled & tx["is_fraud"]).sum() > 0, "not every fraud is labeled (yet)"
    # Within 14 days only part of the labels has arrived; fraud is still labeled far more often.
    fraud_rate = labeled[tx["is_fraud"]].mean()
    genuine_rate = labeled[~tx["is_fraud"]].mean()
    assert fraud_rate > 3 * genuine_rate


def test_jsonl_carries_the_same_transactions_as_parquet(run: tuple[Path, GenerateSummary]) -> None:
    out, summary = run
    lines = _read_jsonl(out / "transactions.jsonl")
    assert len(lines) == summary.transactions
    table = pq.read_table(out / "transactions.parquet")
    rows = list(range(2000)) + list(range(len(lines) - 1000, len(lines)))
    expected = table.take(rows).to_pylist()
    for i, want in zip(rows, expected, strict=True):
        got = lines[i]
        assert list(got) == TRANSACTION_SCHEMA.names
        stamp = got["event_timestamp"]
        assert isinstance(stamp, str)
        assert is_rfc3339(stamp)
        assert pd.Series([stamp]).str.fullmatch(JSON_TIME_FORMAT).all()
        assert datetime.fromisoformat(stamp) == want["event_timestamp"]
        assert isinstance(got["amount"], float)
        for name in TRANSACTION_SCHEMA.names:
            if name != "event_timestamp":
                assert got[name] == want[name], (i, name)
    assert any(line["device_id"] is None for line in lines)


def test_jsonl_carries_the_same_labels_as_parquet(run: tuple[Path, GenerateSummary]) -> None:
    out, summary = run
    lines = _read_jsonl(out / "labels.jsonl")
    expected = pq.read_table(out / "labels.parquet").to_pylist()
    assert len(lines) == len(expected) == summary.labels
    for got, want in zip(lines, expected, strict=True):
        assert got["transaction_id"] == want["transaction_id"]
        assert got["is_fraud"] is want["is_fraud"]
        assert isinstance(got["label_timestamp"], str)
        assert got["label_timestamp"].endswith("Z")
        assert datetime.fromisoformat(got["label_timestamp"]) == want["label_timestamp"]


def test_daily_and_weekly_rhythm(tx: pd.DataFrame) -> None:
    us = tx[(tx["country"] == "US") & (tx["pattern"] == "none")]
    local_hour = (us["event_timestamp"] - pd.Timedelta(hours=5)).dt.hour
    per_hour = local_hour.value_counts()
    night = per_hour.reindex(range(1, 5)).sum()
    midday = per_hour.reindex(range(11, 15)).sum()
    assert midday > 4 * night
    per_weekday = tx["event_timestamp"].dt.dayofweek.value_counts()
    assert per_weekday[5] > per_weekday[6], "Saturday is busier than Sunday"


def test_progress_is_reported_per_day(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    generate(tmp_path, replace(CONFIG, cards=50, days=4), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_config_rejects_naive_end_and_empty_worlds() -> None:
    with pytest.raises(ValueError, match="timezone"):
        GenerateConfig(end=datetime(2026, 11, 15))
    with pytest.raises(ValueError, match="at least 1"):
        GenerateConfig(cards=0)
    aware = GenerateConfig(end=datetime(2026, 11, 15, 1, tzinfo=UTC))
    assert aware.end_ms == int(aware.end.timestamp() * 1000)
    assert aware.end_ms - aware.start_ms == aware.days * 86_400_000
