"""The JSONL reader as `stream produce` had it before the columnar one (json.loads line by line, worker.py at
9fd4c84): the reference `tests/unit/test_producer.py` checks the fast reader against, and the baseline of
`bench/produce.py`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

Batch = tuple[np.ndarray, dict[str, Any], dict[int, str]]


def per_line_batches(path: Path, fields: list[str], batch_rows: int) -> Iterator[Batch]:
    line_no = 0
    with path.open("rb") as handle:
        while lines := handle.readlines(batch_rows * 200):
            records: list[dict[str, Any]] = []
            numbers: list[int] = []
            unreadable: dict[int, str] = {}
            for line in lines:
                line_no += 1
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    unreadable[len(records)] = f"line is not valid JSON ({exc})"
                    record = {}
                if not isinstance(record, dict):
                    unreadable[len(records)] = "line is not a JSON object"
                    record = {}
                records.append(record)
                numbers.append(line_no)
            columns = {f: [r.get(f) for r in records] for f in fields}
            yield np.array(numbers, dtype=np.int64), columns, unreadable
