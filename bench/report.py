"""What every benchmark ends with: a table on the console and its figures as JSON in bench/results/."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, object]:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def print_table(console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def write_result(console: Console, name: str, result: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {out}")
    return out
