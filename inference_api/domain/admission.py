"""Admission of `score:batch` requests: a bound on the batch items one API process scores at once.

A batch is CPU work on the process's event loop and one script call on Redis. Past a few batches in flight, more
concurrency buys no throughput: requests only wait, and while they wait on a busy loop their feature fetch runs
out of its budget, so a healthy store would be reported as `features_unavailable`. So a batch that would take the
process past `limit` items in flight is refused at once, before any lookup, with 503 `overloaded` and Retry-After
(SPEC, Errors): the client learns that this service is saturated and when to come back. A batch larger than the
limit is still admitted when nothing else is in flight, so that every batch the size limit accepts can be scored.
One event loop per process: the count needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import FraudserveError
from inference_api.domain.batching import Overloaded


class BatchOverloaded(Overloaded):
    """`overloaded` for batch items: the batch path's own words, the same code, status and Retry-After."""

    def __init__(self, in_flight: int, limit: int, items: int, retry_after_s: int = 1) -> None:
        FraudserveError.__init__(
            self,
            f"the API is scoring {in_flight} batch items, and {items} more would pass its limit of {limit} "
            f"(FRAUDSERVE_BATCH_MAX_ITEMS_IN_FLIGHT); retry after {retry_after_s} s, or add API replicas",
            {"in_flight": in_flight, "limit": limit, "items": items, "retry_after_s": retry_after_s},
        )
        self.retry_after_s = retry_after_s


class Admission:
    def __init__(self, limit: int, retry_after_s: int = 1) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0

    @contextmanager
    def admit(self, items: int) -> Iterator[None]:
        """Hold `items` of the limit while the block runs; `BatchOverloaded` when they do not fit."""
        if self.in_flight and self.in_flight + items > self.limit:
            self.refused += 1
            raise BatchOverloaded(self.in_flight, self.limit, items, self.retry_after_s)
        self.in_flight += items
        try:
            yield
        finally:
            self.in_flight -= items
