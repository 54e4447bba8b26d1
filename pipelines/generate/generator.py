"""Orchestration: build the world, then generate, label and write one day at a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.generate.batch import Batch, concat
from pipelines.generate.config import DAY_MS, PATTERNS, GenerateConfig, GenerateSummary
from pipelines.generate.fraud import INCIDENT_PATTERNS, inject_fraud
from pipelines.generate.labels import sample_labels
from pipelines.generate.tables import label_table, transaction_ids, transaction_table, truth_table
from pipelines.generate.traffic import genuine_traffic
from pipelines.generate.world import World, build_world
from pipelines.generate.writer import EventWriters

# Independent random streams per (seed, day, chunk).
_TRAFFIC, _FRAUD, _LABELS = 1, 2, 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def generate_day(world: World, config: GenerateConfig, day: int) -> tuple[Batch, dict[str, int]]:
    """All transactions of `day` (0-based), sorted by event time, and its incident counts."""
    day_start = config.start_ms + day * DAY_MS
    parts: list[Batch] = []
    incidents = dict.fromkeys(INCIDENT_PATTERNS, 0)
    for chunk, first in enumerate(range(0, config.cards, config.cards_per_chunk)):
        end = min(first + config.cards_per_chunk, config.cards)
        genuine = genuine_traffic(
            world, np.random.default_rng([config.seed, day, chunk, _TRAFFIC]), day_start, first, end
        )
        fraud_rng = np.random.default_rng([config.seed, day, chunk, _FRAUD])
        fraud, counts = inject_fraud(
            world, config, fraud_rng, day=day, chunk=chunk, cards=range(first, end), genuine=genuine
        )
        parts += [genuine, fraud]
        for name, count in counts.items():
            incidents[name] += count
    merged = concat(parts, len(world.device_ids), len(world.ip_addresses))
    return merged.sorted_by_time(), incidents


def generate(
    out_dir: Path, config: GenerateConfig, progress: Callable[[int, int], None] | None = None
) -> GenerateSummary:
    """Write transactions, labels (Parquet and JSON Lines) and the ground truth for `config` into `out_dir`.

    Memory is bounded by one day of numeric columns plus `config.rows_per_write` rows of strings.
    `progress(done_days, total_days)` is called after each day.
    """
    started = time.perf_counter()
    world = build_world(config)
    pattern_counts = dict.fromkeys(PATTERNS, 0)
    incidents = dict.fromkeys(INCIDENT_PATTERNS, 0)
    incidents["compromised_merchant"] = len(world.compromised)
    transactions = labels_written = fraud_labels = 0
    with EventWriters(Path(out_dir)) as writers:
        for day in range(config.days):
            batch, counts = generate_day(world, config, day)
            for name, count in counts.items():
                incidents[name] += count
            labels = sample_labels(
                np.random.default_rng([config.seed, day, 0, _LABELS]), config, batch.pattern > 0, batch.ts
            )
            devices = pa.concat_arrays([world.device_ids, pa.array(batch.extra_devices, pa.string())])
            ips = pa.concat_arrays([world.ip_addresses, pa.array(batch.extra_ips, pa.string())])
            for first in range(0, len(batch), config.rows_per_write):
                end = min(first + config.rows_per_write, len(batch))
                part = batch.rows(first, end)
                ids = transaction_ids(day, first, end - first)
                part_labels = labels.between(first, end)
                writers.write(
                    transaction_table(world, part, ids, devices, ips),
                    label_table(ids, part_labels, first),
                    truth_table(ids, part.pattern),
                )
            transactions += len(batch)
            labels_written += len(labels.rows)
            fraud_labels += int(labels.is_fraud.sum())
            for code, count in enumerate(np.bincount(batch.pattern, minlength=len(PATTERNS)).tolist()):
                pattern_counts[PATTERNS[code]] += count
            if progress is not None:
                progress(day + 1, config.days)
        files = dict(writers.files)
    fraud = transactions - pattern_counts["none"]
    return GenerateSummary(
        transactions=transactions,
        labels=labels_written,
        fraud_transactions=fraud,
        fraud_rate=fraud / transactions if transactions else 0.0,
        start=_EPOCH + timedelta(milliseconds=config.start_ms),
        end=_EPOCH + timedelta(milliseconds=config.end_ms),
        files=files,
        seconds=time.perf_counter() - started,
        pattern_counts=pattern_counts,
        incidents=incidents,
        fraud_labels=fraud_labels,
    )
