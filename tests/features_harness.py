"""Run the real offline pipeline on hand-made events and index its output, for feature tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from core.settings import OfflineLayout
from pipelines.features.catalog import WindowView
from pipelines.features.semantics import Event, Label
from pipelines.offline.backfill import BackfillSummary, backfill

T0 = 1_762_000_000_000  # 2025-11-01T12:26:40Z in epoch ms
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def txn(
    transaction_id: str,
    ts_ms: int,
    card: str = "c1",
    merchant: str = "m1",
    amount: float = 10.0,
    device: str | None = "d1",
    ip: str | None = "1.1.1.1",
    country: str = "US",
    category: str = "5411",
    **extra: Any,
) -> dict[str, Any]:
    """A transaction event (extra declared fields, e.g. `customer_id`, as keyword arguments)."""
    return {
        "transaction_id": transaction_id,
        "card_id": card,
        "merchant_id": merchant,
        "device_id": device,
        "ip_address": ip,
        "amount": amount,
        "currency": "USD",
        "merchant_category": category,
        "country": country,
        "event_timestamp": iso(ts_ms),
        **extra,
    }


def label(transaction_id: str, ts_ms: int, is_fraud: bool = True) -> dict[str, Any]:
    return {"transaction_id": transaction_id, "is_fraud": is_fraud, "label_timestamp": iso(ts_ms)}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@dataclass
class Offline:
    summary: BackfillSummary
    layout: OfflineLayout

    def table(self, view: WindowView | str) -> pd.DataFrame:
        """The offline rows of a window view (the view or its name)."""
        table: pd.DataFrame = pq.read_table(self.layout.file(view if isinstance(view, str) else view.view)).to_pandas()
        return table

    def value(self, view: WindowView, key: str, ts_ms: int, feature: str) -> Any:
        df = self.table(view)
        ms = df["event_timestamp"].astype("datetime64[ms, UTC]").astype("int64")
        rows = df[(df[view.join_key] == key) & (ms == ts_ms)]
        assert len(rows) == 1, f"expected one {view.view} row for {key} at {ts_ms}, found {len(rows)}"
        value = rows.iloc[0][feature]
        return None if pd.isna(value) else value.item() if hasattr(value, "item") else value


def run_backfill(tmp: Path, transactions: list[dict[str, Any]], labels: list[dict[str, Any]] | None = None) -> Offline:
    tmp.mkdir(parents=True, exist_ok=True)
    tx_path = write_jsonl(tmp / "transactions.jsonl", transactions)
    label_path = write_jsonl(tmp / "labels.jsonl", labels or [])
    layout = OfflineLayout(tmp / "offline")
    return Offline(backfill(tx_path, label_path, layout), layout)


def as_events(transactions: list[dict[str, Any]]) -> list[Event]:
    """The events as the pure semantics reads them: every field but the id and the time, plus `event_time_ms`."""
    events = []
    for t in transactions:
        ts = int(pd.Timestamp(t["event_timestamp"]).value // 1_000_000)
        fields = {k: v for k, v in t.items() if k not in ("transaction_id", "event_timestamp")}
        events.append(Event(t["transaction_id"], ts, {**fields, "event_time_ms": ts}))
    return events


def as_labels(labels: list[dict[str, Any]]) -> dict[str, list[Label]]:
    out: dict[str, list[Label]] = {}
    for row in labels:
        ts = int(pd.Timestamp(row["label_timestamp"]).value // 1_000_000)
        out.setdefault(row["transaction_id"], []).append(Label(row["transaction_id"], row["is_fraud"], ts))
    return out
