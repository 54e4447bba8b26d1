"""Turning numeric batches into Arrow tables with the event schemas (strings built by `take`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.events import LABEL_SCHEMA, TIMESTAMP, TRANSACTION_SCHEMA
from pipelines.generate.batch import Batch, IntArray
from pipelines.generate.config import PATTERNS
from pipelines.generate.labels import Labels
from pipelines.generate.world import World
from pipelines.generate.writer import GROUND_TRUTH_SCHEMA

_PATTERN_NAMES = pa.array(PATTERNS, pa.string())


def transaction_ids(day: int, first: int, count: int) -> pa.Array:
    """`tx_{day:04d}_{n:07d}` for n in [first, first + count): unique across the run."""
    n = pa.array(np.arange(first, first + count, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(f"tx_{day:04d}_", pc.utf8_lpad(n, width=7, padding="0"), "")


def _take(table: pa.Array, index: IntArray) -> pa.Array:
    """`table[index]`, null where index is -1."""
    missing = index < 0
    return table.take(pa.array(np.where(missing, 0, index), mask=missing))


def transaction_table(world: World, batch: Batch, ids: pa.Array, devices: pa.Array, ips: pa.Array) -> pa.Table:
    """Rows of `batch` as TRANSACTION_SCHEMA; `devices`/`ips` are the world tables plus the batch extras."""
    m = pa.array(batch.merchant)
    return pa.Table.from_arrays(
        [
            ids,
            world.card_ids.take(pa.array(batch.card)),
            world.merchant_ids.take(m),
            _take(devices, batch.device),
            _take(ips, batch.ip),
            pa.array(batch.amount, pa.float64()),
            world.merchant_currency.take(m),
            world.merchant_mcc.take(m),
            world.merchant_country_code.take(m),
            pa.array(batch.ts, TIMESTAMP),
        ],
        schema=TRANSACTION_SCHEMA,
    )


def truth_table(ids: pa.Array, pattern: np.ndarray[tuple[int], np.dtype[np.int8]]) -> pa.Table:
    """Ground truth: every transaction's fraud flag and pattern."""
    return pa.Table.from_arrays(
        [ids, pa.array(pattern > 0), _PATTERN_NAMES.take(pa.array(pattern))], schema=GROUND_TRUTH_SCHEMA
    )


def label_table(ids: pa.Array, labels: Labels, first_row: int) -> pa.Table:
    """Labels whose rows index `ids` after subtracting `first_row`."""
    return pa.Table.from_arrays(
        [
            ids.take(pa.array(labels.rows - first_row)),
            pa.array(labels.is_fraud, pa.bool_()),
            pa.array(labels.label_ts, TIMESTAMP),
        ],
        schema=LABEL_SCHEMA,
    )
