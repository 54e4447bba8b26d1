"""What every command shares: the consoles, settings, progress bars, error display and small formatting."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.settings import Settings

console = Console(stderr=True)
out = Console()


def load_settings() -> Settings:
    return Settings()


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal and os.environ.get("FRAUDSERVE_PROGRESS") != "1",
    )


def fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(code=1)


def parse_end(end: str | None) -> datetime:
    if end is None:
        now = datetime.now(UTC)
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(end)
    except ValueError as exc:
        raise ValueError(f"--end {end!r} is not an RFC 3339 date-time such as 2026-11-01T00:00:00Z") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"--end {end!r} has no time zone; add Z for UTC")
    return parsed.astimezone(UTC)


def print_vectors(vectors: list[dict[str, object]]) -> None:
    table = Table(title="online feature vectors (read through Feast)")
    table.add_column("feature")
    for vector in vectors:
        table.add_column(str(vector.get("transaction_id")), justify="right")
    for name in vectors[0] if vectors else []:
        if name == "transaction_id":
            continue
        table.add_row(name, *(fmt(v.get(name)) for v in vectors))
    out.print(table)


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}"
    return str(value)
