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

from pipelines.features.catalog import (
    ENTITIES,
    MERCHANT,
    TRANSACTION,
    TRANSACTION_FIELDS,
    EntitySpec,
    features_of,
    max_window,
)
from pipelines.features.semantics import Event, Label, evaluate
from pipelines.online_layout import encode_ts, encode_value, entity_key, feature_field, ts_field

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
        touched = [(self.entities[name], key) for name, key in sorted(result.touched)]
        if not self._recompute_together(touched, result):
            for entity, key in touched:  # contention: entity by entity, each retried until it wins
                result.retries += self._recompute(entity, key)
        result.recomputed = len(touched)
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
    def _watched(self, entity: EntitySpec, key: str) -> list[str]:
        state = state_key(entity, key)
        return [state, labels_key(key)] if entity is MERCHANT else [state]

    def _compute(
        self, entity: EntitySpec, key: str, raw: dict[bytes, bytes], label_members: list[bytes]
    ) -> tuple[dict[bytes | str, bytes], list[str]] | None:
        """The entity's online row at its latest event, and the history entries too old to keep."""
        events = [_unpack(tid.decode(), value) for tid, value in raw.items()]
        if not events:
            return None
        latest = max(e.ts_ms for e in events)
        keep_from = latest - int(max_window(entity).total_seconds() * 1000) - self.lateness_ms
        stale = [e.transaction_id for e in events if e.ts_ms < keep_from]
        labels: dict[str, list[Label]] = {}
        for member in label_members:
            tid, ts, fraud = member.decode().rsplit("|", 2)
            labels.setdefault(tid, []).append(Label(tid, fraud == "1", int(ts)))
        mapping: dict[bytes | str, bytes] = {
            feature_field(entity.view, f.name): encode_value(evaluate(f, events, latest, labels), f.dtype)
            for f in features_of(entity)
        }
        mapping[ts_field(entity.view)] = encode_ts(latest)
        return mapping, stale

    def _recompute_together(self, touched: list[tuple[EntitySpec, str]], result: BatchResult) -> bool:
        """All touched entities in three round trips: WATCH, pipelined reads, one MULTI/EXEC. False on contention."""
        if not touched:
            return True
        watched = [k for entity, key in touched for k in self._watched(entity, key)]
        with self.client.pipeline(transaction=True) as tx:
            try:
                tx.watch(*watched)
                reads = self.client.pipeline(transaction=False)  # another connection: reads go in one round trip
                for entity, key in touched:
                    reads.hgetall(state_key(entity, key))
                    if entity is MERCHANT:
                        reads.hkeys(labels_key(key))
                replies = iter(reads.execute())
                tx.multi()
                for entity, key in touched:
                    raw = next(replies)
                    members = next(replies) if entity is MERCHANT else []
                    computed = self._compute(entity, key, raw, members)
                    if computed is not None:
                        self._write(tx, entity, key, *computed)
                tx.execute()
                return True
            except redis.WatchError:
                result.retries += 1
                return False

    def _recompute(self, entity: EntitySpec, key: str) -> int:
        """One entity, retried until no other worker changed its history meanwhile; returns the retries."""
        retries = 0
        while True:
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*self._watched(entity, key))
                    raw = pipe.hgetall(state_key(entity, key))
                    members = pipe.hkeys(labels_key(key)) if entity is MERCHANT else []
                    computed = self._compute(entity, key, raw, members)
                    if computed is None:
                        pipe.unwatch()
                        return retries
                    pipe.multi()
                    self._write(pipe, entity, key, *computed)
                    pipe.execute()
                    return retries
                except redis.WatchError:
                    retries += 1

    def _write(
        self, pipe: Any, entity: EntitySpec, key: str, mapping: dict[bytes | str, bytes], stale: list[str]
    ) -> None:
        pipe.hset(entity_key(self.project, entity.join_key, key), mapping=mapping)
        if stale:
            pipe.hdel(state_key(entity, key), *stale)
