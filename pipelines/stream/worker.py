"""Stream workers: validated events in from the stream, online features out, dead letters counted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import redis

from pipelines.events import LABELS, TRANSACTIONS
from pipelines.stream.log import DEAD_LETTER, Entry, EventLog, RedisStreamLog
from pipelines.stream.updater import BatchResult, OnlineUpdater, PreparedBatch

log = logging.getLogger("fraudserve.stream")
REDIS_OUTAGE_S = 120  # how long a worker waits for Redis to come back before it gives up
STATS = "fraudserve:stream:stats"
FRESHNESS = "fraudserve:stream:freshness-ms"
FRESHNESS_SAMPLES = 5000
WATERMARK = "fraudserve:stream:watermark-ms"  # the latest event time seen by any worker
# A worker reads `batch` events at a time while reads come back short (a steady rate: the batch is what arrived
# during the previous one, so freshness is one batch's work), and while they come back full (a backlog: catching
# up) reads READ_GROWTH times more each time, up to MAX_BATCH. Events of one entity in one batch are folded in one
# script call, so a larger batch touches fewer entity states per event (the merchants, categories and countries
# most events share): Redis's CPU per event at 8,000 was 0.50x that at 500 (`bench.fold_profile --batches`).
MAX_BATCH = 8000
READ_GROWTH = 4


class WorkerMetrics:
    """A worker's own Prometheus figures (served with `FRAUDSERVE_STREAM_METRICS_PORT`)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.processed = Counter("fraudserve_stream_events", "Events applied", ["kind"], registry=self.registry)
        self.late = Counter("fraudserve_stream_late_events", "Events later than the lateness", registry=self.registry)
        self.superseded = Counter(
            "fraudserve_stream_superseded_writes",
            "Entity rows not written because another worker had already written a newer computation",
            registry=self.registry,
        )
        self.lag = Gauge("fraudserve_stream_lag", "Entries not yet delivered plus pending", registry=self.registry)
        self.freshness = Histogram(
            "fraudserve_stream_freshness_seconds", "Append to visible online", registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)


class Worker:
    def __init__(
        self, client: redis.Redis, project: str, consumer: str, lateness: timedelta, batch: int = 500,
        claim_idle_ms: int = 15_000, partitions: int = 1, log: EventLog | None = None, max_batch: int = MAX_BATCH,
    ) -> None:  # fmt: skip
        """`log`: where the events come from (default: Redis Streams on `client`; `KafkaLog` for Kafka). The online
        store, the stats and the freshness samples are on `client` whichever it is. `batch`: events per read while
        reads come back short; `max_batch`: the most per read under a backlog (`batch` or less: a fixed size)."""
        self.client: Any = client
        self.stream: Any = log if log is not None else RedisStreamLog(client, partitions=partitions)
        self.updater = OnlineUpdater(client, project, lateness)
        self.consumer = consumer
        self.batch = batch
        self.max_batch = max(batch, max_batch)
        self.read_size = batch  # what the next read asks for (`next_read_size`)
        self.claim_idle_ms = claim_idle_ms
        self.lateness_ms = int(lateness.total_seconds() * 1000)
        self.metrics = WorkerMetrics()
        self._processed = 0

    def process(self, entries: list[Entry]) -> None:
        """Apply a batch, then acknowledge it."""
        batch, late = self._prepare(entries)
        self._finish(entries, late, self._write(batch))

    def _prepare(self, entries: list[Entry]) -> tuple[PreparedBatch, int]:
        transactions = [e.event for e in entries if e.kind == TRANSACTIONS.name]
        labels = [e.event for e in entries if e.kind == LABELS.name]
        # A log that knows each event's own partition time (Kafka: partitions are read at their own pace) says which
        # are late; otherwise one watermark shared by all workers (Redis Streams: every worker reads every partition).
        per_partition = getattr(self.stream, "late", None)
        late = per_partition(entries, self.lateness_ms) if per_partition is not None else self._late(transactions)
        if late and per_partition is not None:
            log.warning("late events", extra={"late": late, "lateness_ms": self.lateness_ms})
        return self.updater.prepare(transactions, labels), late

    def _write(self, batch: PreparedBatch) -> tuple[BatchResult, int]:
        """The batch's online writes, and when they were done: the rows are visible then, whenever it is
        acknowledged (a Kafka commit's round trip is not freshness)."""
        applied = self.updater.write(batch)
        return applied, int(time.time() * 1000)

    def _finish(self, entries: list[Entry], late: int, written: tuple[BatchResult, int]) -> None:
        """Acknowledge a written batch, and count it."""
        applied, now_ms = written
        self.stream.ack(entries)
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(STATS, "processed", len(entries))
        if late:
            pipe.hincrby(STATS, "late", late)
        pipe.lpush(FRESHNESS, *[max(now_ms - e.appended_ms, 0) for e in entries])
        pipe.ltrim(FRESHNESS, 0, FRESHNESS_SAMPLES - 1)
        pipe.execute()
        self.metrics.processed.labels(TRANSACTIONS.name).inc(applied.transactions)
        self.metrics.processed.labels(LABELS.name).inc(applied.labels)
        self.metrics.late.inc(late)
        self.metrics.superseded.inc(applied.superseded)
        for entry in entries:
            self.metrics.freshness.observe(max(now_ms - entry.appended_ms, 0) / 1000)
        self._processed += len(entries)

    def _late(self, transactions: list[dict[str, Any]]) -> int:
        """Events older than the watermark minus the lateness: still folded into every window they fall in (exactly,
        as the offline pipeline counts them), but reported: a producer that lags this much is worth a look."""
        if not transactions:
            return 0
        watermark = int(self.client.get(WATERMARK) or 0)
        late = sum(1 for t in transactions if t["ts_ms"] < watermark - self.lateness_ms)
        newest = max(t["ts_ms"] for t in transactions)
        if newest > watermark:
            self.client.set(WATERMARK, newest)  # a race may keep a slightly older value: reporting only
        if late:
            log.warning("late events", extra={"late": late, "lateness_ms": self.lateness_ms})
        return late

    def next_read_size(self, got: int) -> int:
        """The next read's size after a read that returned `got` events: READ_GROWTH times larger (up to
        `max_batch`) after a full one, back to `batch` after one that was not even half full (the backlog is gone:
        small batches keep freshness at a steady rate); else unchanged."""
        if got >= self.read_size:
            return min(self.read_size * READ_GROWTH, self.max_batch)
        if got * 2 < self.read_size:
            return self.batch
        return self.read_size

    def run(self, until_idle_s: float | None = None, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Consume until stopped (or, with `until_idle_s`, until the stream has been drained for that long).

        Redis going away (restarted, loading its AOF) does not end the worker: it waits and goes on. What it had
        read but not acknowledged stays pending and is claimed again, and applying an event twice changes nothing."""
        self._processed = 0
        outage_since: float | None = None
        while True:
            try:
                self._run(until_idle_s, should_stop)
                if hasattr(self.stream, "close"):
                    self.stream.close()  # a Kafka consumer leaves its group: its partitions move at once
                return self._processed
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                outage_since = outage_since or time.monotonic()
                if time.monotonic() - outage_since > REDIS_OUTAGE_S:
                    raise
                log.warning("Redis unavailable; retrying", extra={"error": str(exc)})
                time.sleep(0.5)

    def _run(self, until_idle_s: float | None, should_stop: Callable[[], bool]) -> None:
        self.stream.ensure_group()
        last_claim = 0.0
        idle_since: float | None = None
        while not should_stop():
            entries: list[Entry] = []
            if time.monotonic() - last_claim > 5:
                entries = self.stream.claim_stale(self.consumer, self.claim_idle_ms, self.batch)
                last_claim = time.monotonic()
            if not entries:
                entries = self.stream.read(self.consumer, self.read_size, block_ms=500)
                self.read_size = self.next_read_size(len(entries))
            if entries:
                self.process(entries)
                idle_since = None
                continue
            lag = self.stream.lag()
            self.metrics.lag.set(lag["lag"] + lag["pending"])
            if until_idle_s is not None and lag["lag"] == 0 and lag["pending"] == 0:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= until_idle_s:
                    return


def status(client: redis.Redis, sample_s: float = 1.0, partitions: int = 1, log: Any = None) -> dict[str, Any]:
    """Lag of the consumer group, events/s, dead letters and freshness (append to online visibility, p50/p99).

    With `log` (a `KafkaLog`): the lag and the dead letters as the brokers count them."""
    stream = log if log is not None else RedisStreamLog(client, partitions=partitions)
    before = int(client.hget(STATS, "processed") or 0)  # type: ignore[arg-type]
    time.sleep(sample_s)
    stats = {k.decode(): int(v) for k, v in client.hgetall(STATS).items()}  # type: ignore[union-attr]
    samples = np.array([int(v) for v in client.lrange(FRESHNESS, 0, -1)], dtype=np.float64)  # type: ignore[union-attr]
    return {
        **stream.lag(),
        "processed": stats.get("processed", 0),
        "events_per_second": (stats.get("processed", 0) - before) / sample_s,
        "dead_letter": log.dead_letter_count() if log is not None else int(client.xlen(DEAD_LETTER)),  # type: ignore[arg-type]
        "late": stats.get("late", 0),
        "freshness_p50_ms": float(np.percentile(samples, 50)) if samples.size else None,
        "freshness_p99_ms": float(np.percentile(samples, 99)) if samples.size else None,
    }
