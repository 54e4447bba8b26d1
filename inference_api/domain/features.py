"""The online feature source: transaction records and the features of their views from Feast's online store.

`FeatureSource` is the small interface the scoring service needs. `FeastFeatureSource` implements it with Feast's
own async SDK (`get_online_features_async`), and returns each feature view's event timestamp so that the service
can enforce TTLs (Feast does not on online reads). Another implementation (a per-transaction vector stored by the
stream worker, read in one round trip) can replace it without touching the scoring code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import redis
from redis.exceptions import RedisClusterException

from core.errors import RedisUnavailable
from inference_api.domain.plan import FeaturePlan, transaction_layout
from pipelines.features.catalog import TRANSACTION_VIEW
from pipelines.online_layout import ABSENT_KEY

if TYPE_CHECKING:
    from feast import FeatureStore

_PRESENT = 1
T = TypeVar("T")


@dataclass(frozen=True)
class TransactionRecord:
    """A transaction: its id and every field of the transaction view (SPEC's and the repo's extra ones)."""

    transaction_id: str
    fields: dict[str, Any]  # field name -> value (None: not set), for every field of the transaction view
    stored_at: float | None = None  # the online row's event timestamp (epoch seconds)
    # Features of the plan's views read in the same round trip as the transaction (see FeatureSource).
    views: dict[str, ViewValues] | None = field(default=None, compare=False, repr=False)
    views_plan: FeaturePlan | None = field(default=None, compare=False, repr=False)

    def key(self, join_key: str) -> str | None:
        """The transaction's value of a join key (a string field), None when it has none."""
        value = self.fields.get(join_key)
        return None if value is None else str(value)

    def get(self, name: str) -> Any:
        """A field's value (the transaction id included)."""
        return self.transaction_id if name == "transaction_id" else self.fields.get(name)

    @property
    def amount(self) -> float:
        return float(self.fields["amount"])

    @property
    def event_time_ms(self) -> int:
        return int(self.fields["event_time_ms"])


@dataclass(frozen=True)
class ViewValues:
    values: dict[str, Any]
    timestamp: float | None  # epoch seconds of the entity's row; None when the entity is not in the online store


@dataclass(frozen=True)
class FeatureColumns:
    """A batch's transactions and their entity features column-wise, one entry per requested id in order: what the
    batch path builds its model matrix from, without an object per transaction or per value.

    `numbers` holds "view:feature" (the transaction's own fields as "transaction_features:field") as float64 arrays,
    NaN where missing, with the values `decode_value` gives (a boolean is 1.0); `stamps` each view's row timestamp in
    epoch seconds (NaN: no row); `present` whether each transaction has a value of a join key; `text(field, i)` a
    transaction field of row i as `TransactionRecord.fields` would hold it (for messages, decoded on demand)."""

    ids: Sequence[str]
    found: np.ndarray
    numbers: dict[str, np.ndarray]
    stamps: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    text: Callable[[str, int], Any] = field(compare=False, repr=False)


async def within_budget(call: Awaitable[T], budget_s: float, loop_lag_s: float = 0.0) -> T:
    """Await an online-store call inside the request's time budget; failures become `features_unavailable`.

    `loop_lag_s`: up to this much time in all that the event loop itself was too busy to look at the reply (its
    deadline came while other requests' work ran, so the timer fired late) is added to the budget: a saturated
    process is not a slow store. A store that does not answer while the loop is free still times out at the
    budget."""
    try:
        if loop_lag_s <= 0:
            async with asyncio.timeout(budget_s):  # no extra task per call, unlike wait_for
                return await call
        return await _within_store_time(call, budget_s, loop_lag_s)
    except STORE_ERRORS as exc:
        raise store_unavailable(exc, budget_s) from exc


# What a store call raises when the store is down or slow (RedisClusterException, not a RedisError: a cluster whose
# slot map cannot be loaded or lacks a slot; TimeoutError: the budget ran out).
STORE_ERRORS = (TimeoutError, redis.RedisError, RedisClusterException, OSError)


def store_unavailable(exc: BaseException, budget_s: float) -> RedisUnavailable:
    """The `features_unavailable` answer for one of `STORE_ERRORS`: the budget's message for a timeout."""
    if isinstance(exc, TimeoutError):
        return RedisUnavailable(
            f"the online store did not answer within {budget_s * 1000:.0f} ms; try again shortly",
            {"budget_ms": round(budget_s * 1000)},
        )
    return RedisUnavailable(
        "the online store (Redis) is unavailable; try again shortly", {"reason": type(exc).__name__}
    )


LATE_S = 0.005  # a deadline timer that fires later than this found the loop busy with other work


async def _within_store_time(call: Awaitable[T], budget_s: float, loop_lag_s: float) -> T:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as scope:
        deadline, spare = loop.time() + budget_s, loop_lag_s
        handle: asyncio.TimerHandle | None = None

        def expire() -> None:
            nonlocal deadline, spare, handle
            now = loop.time()
            late = now - deadline
            if late > LATE_S and spare > 0:  # a reply that came meanwhile is read before this new deadline
                grant = min(late, spare)
                spare -= grant
                deadline = now + grant
                handle = loop.call_at(deadline, expire)
            else:
                scope.reschedule(now)

        handle = loop.call_at(deadline, expire)
        try:
            return await call
        finally:
            if handle is not None:
                handle.cancel()


class FeatureSource(Protocol):
    async def transactions(self, ids: Sequence[str], plan: FeaturePlan | None = None) -> list[TransactionRecord | None]:
        """The stored transactions (None where unknown). With `plan`, a source may also read the plan's entity
        features in the same round trip and attach them to each record (`views`, `views_plan`)."""
        ...

    async def views(self, plan: FeaturePlan, records: Sequence[TransactionRecord]) -> list[dict[str, ViewValues]]: ...

    async def ping(self) -> bool: ...


class FeastFeatureSource:
    def __init__(self, store: FeatureStore, budget_s: float) -> None:
        self.store = store
        self.budget_s = budget_s
        self.join_key, self.fields = transaction_layout(store)

    async def _read(self, refs: list[str], rows: list[dict[str, str]]) -> Any:
        return await within_budget(self.store.get_online_features_async(features=refs, entity_rows=rows), self.budget_s)

    async def transactions(self, ids: Sequence[str], plan: FeaturePlan | None = None) -> list[TransactionRecord | None]:
        refs = [f"{TRANSACTION_VIEW}:{f}" for f in self.fields]
        response = await self._read(refs, [{self.join_key: i} for i in ids])
        columns = _columns(response)
        records: list[TransactionRecord | None] = []
        for row, transaction_id in enumerate(ids):
            values, statuses, stamps = columns["card_id"]
            if statuses[row] != _PRESENT or values[row] is None:  # every stored transaction has a card
                records.append(None)
                continue
            fields = {f: columns[f][0][row] for f in self.fields}
            records.append(TransactionRecord(transaction_id, fields, stored_at=stamps[row]))
        return records

    async def views(self, plan: FeaturePlan, records: Sequence[TransactionRecord]) -> list[dict[str, ViewValues]]:
        if not plan.views or not records:
            return [{} for _ in records]
        refs = [ref for view in plan.views for ref in view.refs]
        rows = [{k: record.key(k) or ABSENT_KEY for k in plan.entity_keys} for record in records]
        columns = _columns(await self._read(refs, rows))
        result: list[dict[str, ViewValues]] = []
        for row in range(len(records)):
            by_view: dict[str, ViewValues] = {}
            for view in plan.views:
                values = {f: columns[f][0][row] for f in view.features}
                # An entity Feast did not find comes back with a zero timestamp (its status is not reliable).
                found = [
                    columns[f][2][row]
                    for f in view.features
                    if columns[f][1][row] == _PRESENT and columns[f][2][row] > 0
                ]
                by_view[view.view] = ViewValues(values, max(found) if found else None)
            result.append(by_view)
        return result

    async def ping(self) -> bool:
        try:
            await self._read([f"{TRANSACTION_VIEW}:amount"], [{self.join_key: ABSENT_KEY}])
        except RedisUnavailable:
            return False
        return True


def _columns(response: Any) -> dict[str, tuple[list[Any], list[int], list[float]]]:
    """Feature name -> (python values, statuses, event timestamps in epoch seconds), from Feast's response proto."""
    from feast.type_map import feast_value_type_to_python_type

    out: dict[str, tuple[list[Any], list[int], list[float]]] = {}
    for name, vector in zip(response.proto.metadata.feature_names.val, response.proto.results, strict=True):
        values = [feast_value_type_to_python_type(v) for v in vector.values]
        stamps = [ts.seconds + ts.nanos / 1e9 for ts in vector.event_timestamps]
        out[name] = (values, list(vector.statuses), stamps)
    return out
