"""Per-event online updates, exactly once in effect.

Each entity keeps its recent events in a Redis hash under a Cluster hash tag (`fraudserve:{card:c1}:events`),
keyed by transaction id, so a redelivered or duplicated event rewrites the same field and changes nothing. After
new events land, each touched entity's features are recomputed from its whole recent history with the pure
definitions of `pipelines.features.semantics` (the ones the offline SQL is tested against), at the entity's
latest event time, and written in Feast's Redis layout. The recompute is an optimistic transaction (WATCH on the
entity's state): if another worker added an event in between, it runs again, so the last write always reflects
every event stored. Out-of-order events are therefore exact as long as they are still in the kept history
(window plus the allowed lateness).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis

from pipelines.features.catalog import ENTITIES, MERCHANT, TRANSACTION, EntitySpec, features_of, max_window
from pipelines.features.semantics import Event, Label, evaluate
from pipelines.online_layout import encode_ts, encode_value, entity_key, feature_field, ts_field

TRANSACTION_FIELDS = {
    "card_id": "string", "merchant_id": "string", "device_id": "string", "ip_address": "string",
    "amount": "float64", "currency": "string", "merchant_category": "string", "country": "string",
    "event_time_ms": "int64",
}  # fmt: skip
TXN_MERCHANT = "fraudserve:txn-merchant"


def state_key(entity: EntitySpec, key: str) -> str:
    return f"fraudserve:{{{entity.name}:{key}}}:events"


def labels_key(merchant: str) -> str:
    return f"fraudserve:{{merchant:{merchant}}}:labels"


def pending_labels_key(transaction_id: str) -> str:
    return f"fraudserve:pending-labels:{transaction_id}"


def _pack(event: dict[str, Any]) -> str:
    return json.dumps(
        [event["ts_ms"], event["amount"], event["card_id"], event["merchant_id"], event["country"],
         event.get("device_id"), event.get("ip_address")],
        separators=(",", ":"),
    )  # fmt: skip


def _unpack(transaction_id: str, raw: bytes) -> Event:
    ts, amount, card, merchant, country, device, ip = json.loads(raw)
    return Event(transaction_id, int(ts), card, merchant, float(amount), country, device, ip)


@dataclass
class BatchResult:
    transactions: int = 0
    labels: int = 0
    late: int = 0
    recomputed: int = 0
    retries: int = 0
    touched: set[tuple[str, str]] = field(default_factory=set)


class OnlineUpdater:
    def __init__(self, client: redis.Redis, project: str, lateness: timedelta = timedelta(minutes=5)) -> None:
        # redis-py's sync methods are typed as `Awaitable[T] | T`; this module uses the sync client only.
        self.client: Any = client
        self.project = project.encode()
        self.lateness_ms = int(lateness.total_seconds() * 1000)
        self.entities = {e.name: e for e in ENTITIES}

    # ---------------------------------------------------------------------------------------------- ingest
    def apply(self, transactions: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]]) -> BatchResult:
        """Store a batch of validated events and bring every touched entity's online features up to date."""
        result = BatchResult(transactions=len(transactions), labels=len(labels))
        pipe = self.client.pipeline(transaction=False)
        for event in transactions:
            tid = event["transaction_id"]
            packed = _pack(event)
            for entity in ENTITIES:
                key = event.get(entity.join_key)
                if key is not None:
                    pipe.hset(state_key(entity, key), tid, packed)
                    result.touched.add((entity.name, key))
            pipe.hset(TXN_MERCHANT, tid, event["merchant_id"])
            record = {**event, "event_time_ms": event["ts_ms"]}
            mapping: dict[bytes | str, bytes] = {
                feature_field(TRANSACTION.view, name): encode_value(record.get(name), dtype)
                for name, dtype in TRANSACTION_FIELDS.items()
            }
            mapping[ts_field(TRANSACTION.view)] = encode_ts(event["ts_ms"])
            pipe.hset(entity_key(self.project, TRANSACTION.join_key, tid), mapping=mapping)
        pipe.execute()
        self._attach_pending([e["transaction_id"] for e in transactions], result)
        for label in labels:
            self._store_label(label, result)
        for name, key in sorted(result.touched):
            result.retries += self._recompute(self.entities[name], key, result)
            result.recomputed += 1
        return result

    def _store_label(self, label: dict[str, Any], result: BatchResult) -> None:
        tid = label["transaction_id"]
        member = f"{tid}|{label['ts_ms']}|{int(label['is_fraud'])}"
        merchant = self.client.hget(TXN_MERCHANT, tid)
        if merchant is None:
            # The transaction has not arrived yet: park the label, then look again (it may have arrived meanwhile).
            self.client.sadd(pending_labels_key(tid), member)
            merchant = self.client.hget(TXN_MERCHANT, tid)
            if merchant is None:
                return
        self.client.hset(labels_key(merchant.decode()), member, b"1")
        result.touched.add((MERCHANT.name, merchant.decode()))

    def _attach_pending(self, transaction_ids: Iterable[str], result: BatchResult) -> None:
        for tid in transaction_ids:
            members = self.client.smembers(pending_labels_key(tid))
            if not members:
                continue
            merchant = self.client.hget(TXN_MERCHANT, tid)
            assert merchant is not None
            self.client.hset(labels_key(merchant.decode()), mapping=dict.fromkeys(members, b"1"))
            self.client.delete(pending_labels_key(tid))
            result.touched.add((MERCHANT.name, merchant.decode()))

    # ----------------------------------------------------------------------------------------------- compute
    def _recompute(self, entity: EntitySpec, key: str, result: BatchResult) -> int:
        """Recompute and write one entity's features; returns how many times a concurrent writer forced a retry."""
        state = state_key(entity, key)
        watched = [state, labels_key(key)] if entity is MERCHANT else [state]
        retries = 0
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*watched)
                    raw = pipe.hgetall(state)
                    events = [_unpack(tid.decode(), value) for tid, value in raw.items()]
                    if not events:
                        pipe.unwatch()
                        return retries
                    latest = max(e.ts_ms for e in events)
                    keep_from = latest - int(max_window(entity).total_seconds() * 1000) - self.lateness_ms
                    stale = [e.transaction_id for e in events if e.ts_ms < keep_from]
                    labels = self._labels(pipe, key) if entity is MERCHANT else {}
                    mapping: dict[bytes | str, bytes] = {
                        feature_field(entity.view, f.name): encode_value(evaluate(f, events, latest, labels), f.dtype)
                        for f in features_of(entity)
                    }
                    mapping[ts_field(entity.view)] = encode_ts(latest)
                    pipe.multi()
                    pipe.hset(entity_key(self.project, entity.join_key, key), mapping=mapping)
                    if stale:
                        pipe.hdel(state, *stale)
                    pipe.execute()
                    return retries
                except redis.WatchError:
                    retries += 1

    @staticmethod
    def _labels(pipe: Any, merchant: str) -> dict[str, list[Label]]:
        labels: dict[str, list[Label]] = {}
        for member in pipe.hkeys(labels_key(merchant)):
            tid, ts, fraud = member.decode().rsplit("|", 2)
            labels.setdefault(tid, []).append(Label(tid, fraud == "1", int(ts)))
        return labels
