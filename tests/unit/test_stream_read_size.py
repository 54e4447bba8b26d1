"""A stream worker's read size: small at a steady rate (freshness), growing under a backlog (fewer entity states
folded per event), bounded."""

from __future__ import annotations

from datetime import timedelta

import redis

from pipelines.stream.worker import MAX_BATCH, READ_GROWTH, Worker


def worker(batch: int, **kwargs: int) -> Worker:
    # No server: the worker connects on its first command, and none is sent here.
    return Worker(redis.Redis(port=1), "fraudserve", "w", timedelta(minutes=5), batch=batch, **kwargs)


def test_full_reads_grow_the_next_up_to_the_bound_and_short_ones_bring_it_back() -> None:
    w = worker(500)
    assert w.max_batch == MAX_BATCH
    sizes = []
    for _ in range(4):
        w.read_size = w.next_read_size(w.read_size)  # every read full
        sizes.append(w.read_size)
    assert sizes == [min(500 * READ_GROWTH**k, MAX_BATCH) for k in range(1, 5)]
    assert w.next_read_size(MAX_BATCH // 2 + 1) == MAX_BATCH  # more than half full: the backlog is still there
    assert w.next_read_size(MAX_BATCH // 2 - 1) == 500  # less than half: caught up, small reads again
    assert w.next_read_size(0) == 500


def test_a_fixed_size_when_max_batch_is_not_above_batch() -> None:
    w = worker(2, max_batch=2)
    assert w.next_read_size(2) == 2
    assert worker(600, max_batch=100).max_batch == 600
