"""`fraudserve data`: synthetic events."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core.errors import FraudserveError
from fraudserve.commands.common import fail, out, parse_end, progress_bar

if TYPE_CHECKING:
    from pipelines.generate import GenerateConfig, GenerateSummary

app = typer.Typer(no_args_is_help=True, help="Synthetic transaction and label events.")


# ----------------------------------------------------------------------------------------------------------- data
@app.command("generate")
def data_generate(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the events into.")],
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 7,
    cards: Annotated[int, typer.Option(min=1, help="Number of cards.")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="Days of traffic.")] = 14,
    end: Annotated[
        str | None, typer.Option(help="End of the period (RFC 3339, exclusive); default: today 00:00 UTC.")
    ] = None,
) -> None:
    """Write synthetic transaction and label events as Parquet and JSON Lines."""
    from pipelines.generate import GenerateConfig

    try:
        end_at = parse_end(end)
        summary = generate_with_progress(out_dir, GenerateConfig(seed=seed, cards=cards, days=days, end=end_at))
    except (FraudserveError, ValueError) as exc:
        raise fail(exc) from exc
    out.print(
        f"{summary.transactions:,} transactions ({summary.fraud_rate:.2%} fraud), {summary.labels:,} labels, "
        f"{summary.start:%Y-%m-%d} to {summary.end:%Y-%m-%d}, in {summary.seconds:.1f} s "
        f"({summary.transactions / max(summary.seconds, 1e-9):,.0f} transactions/s) -> {out_dir}"
    )


def generate_with_progress(out_dir: Path, config: GenerateConfig) -> GenerateSummary:
    """The generator with a progress bar of the days written."""
    from pipelines.generate import generate

    with progress_bar() as progress:
        task = progress.add_task("generating days", total=config.days)
        return generate(
            out_dir, config, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
