"""`fraudserve models score-batch`: score a Parquet file of feature rows with a registered model, offline."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from core.errors import FraudserveError
from core.settings import Device
from fraudserve.commands.common import console, fail, load_settings, out, progress_bar


def score_batch(
    input_path: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT.parquet",
            help="Feature rows: an id column and the model's features (with --point-in-time: transaction ids).",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Parquet file to write: id, score, label.")],
    model: Annotated[str | None, typer.Option(help="Registered model name (default FRAUDSERVE_MODEL_NAME).")] = None,
    version: Annotated[int | None, typer.Option(help="Version number (instead of --alias).")] = None,
    alias: Annotated[str | None, typer.Option(help="Alias to score with (default production).")] = None,
    device: Annotated[
        Device | None, typer.Option(help="auto, cpu or cuda (default FRAUDSERVE_DEVICE); cuda falls back to the CPU.")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows read, scored and written at a time.")] = 100_000,
    id_column: Annotated[str, typer.Option(help="The input's id column, copied to the output.")] = "transaction_id",
    threads: Annotated[int, typer.Option(min=0, help="CPU threads for the model (0: all cores).")] = 0,
    point_in_time: Annotated[
        bool,
        typer.Option(
            "--point-in-time",
            help="The input holds transaction ids (optionally event_timestamp); features are built as of each "
            "transaction's time from the offline store through Feast, as for a training set.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Score every row of a Parquet file (streamed in chunks) and write id, score and label to another.

    Other input columns are passed through. Labels come from the model's thresholds; there is no `uncertain`
    offline (feature freshness is not known). With --device cuda and no usable GPU it scores on the CPU and says so.
    With --point-in-time the features come from the offline store (Feast get_historical_features) instead.
    """
    from fraudserve.batch_scoring import BatchScorer
    from fraudserve.registry import PRODUCTION, open_registry

    if version is not None and alias is not None:
        raise fail(ValueError("give --version or --alias, not both"))
    settings = load_settings()
    name = model or settings.model_name
    try:
        scorer = BatchScorer.open(
            open_registry(settings, check_features=False),
            name,
            version if version is not None else (alias or PRODUCTION),
            device=(device or settings.device).value,
            threads=threads,
        )
        if scorer.device.fell_back:
            console.print(f"[bold yellow]warning:[/] {scorer.device.describe()}", highlight=False)
        with progress_bar() as progress:
            task = progress.add_task(f"scoring with {name} v{scorer.model.version}", total=None)
            started = time.perf_counter()

            def advance(done: int, total: int) -> None:
                rate = done / max(time.perf_counter() - started, 1e-9)
                description = f"scoring with {name} v{scorer.model.version} ({rate:,.0f} rows/s)"
                progress.update(task, completed=done, total=total, description=description)

            if point_in_time:
                from fraudserve.feature_store import open_offline_store

                summary = scorer.score_transactions(
                    open_offline_store(settings),
                    settings.offline,
                    input_path,
                    output,
                    chunk_rows=chunk_rows,
                    id_column=id_column,
                    progress=advance,
                )
            else:
                summary = scorer.score_parquet(
                    input_path, output, chunk_rows=chunk_rows, id_column=id_column, progress=advance
                )
    except FraudserveError as exc:
        raise fail(exc) from exc
    if as_json:
        out.print_json(json.dumps(summary.as_dict()))
        return
    counts = ", ".join(f"{label} {count:,}" for label, count in summary.labels.items())
    out.print(
        f"scored {summary.rows:,} rows with {summary.model} version {summary.version} ({summary.flavor}) "
        f"on {summary.device.used}: {summary.seconds:.2f} s, {summary.rows_per_second:,.0f} rows/s "
        f"({summary.chunks} chunks of up to {chunk_rows:,} rows)",
        highlight=False,
    )
    out.print(f"labels: {counts}", highlight=False)
    if summary.device.used == "cpu" and summary.device.reason:
        out.print(f"device: cpu ({summary.device.reason})", highlight=False)
    out.print(f"wrote {summary.output}", highlight=False)
