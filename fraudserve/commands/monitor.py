"""`fraudserve monitor`: how each served model version did, and how its inputs drifted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fraudserve.commands.common import console, fail, load_settings, out

app = typer.Typer(no_args_is_help=True, help="Monitoring: the score log judged by labels, and drift.")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@app.command("report")
def report_command(
    model: Annotated[str | None, typer.Option(help="Only this registered model.")] = None,
    days: Annotated[int, typer.Option(min=1, help="The last N days of the score log (UTC days, today included).")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="The stable JSON form (README, Monitoring).")] = False,
    html_path: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    log_dir: Annotated[
        list[Path] | None,
        typer.Option(help="Another score log root (Feast logging_config's are found)."),
    ] = None,
) -> None:
    """Per model version and day: scores, label mix, uncertain share; labelled quality; PSI of score and features."""
    from fraudserve.monitoring import render_html, report

    try:
        data = report(load_settings(), model=model, days=days, log_dirs=log_dir or [])
    except (OSError, ValueError) as exc:
        raise fail(exc) from exc
    if html_path is not None:
        html_path.write_text(render_html(data))
        console.print(f"wrote {html_path}")
    if as_json:
        out.print_json(json.dumps(data))
        return
    _print(data)


@app.command("compact")
def compact_command(
    days: Annotated[
        int | None, typer.Option(min=1, help="Only the finished days among the last N (UTC). Default: every one.")
    ] = None,
    log_dir: Annotated[
        list[Path] | None,
        typer.Option(help="Another score log root (Feast logging_config's are found)."),
    ] = None,
) -> None:
    """Merge each finished day's score log files into one (readers meanwhile see every row once)."""
    from core.score_log import compact
    from fraudserve.monitoring import feast_log_dirs

    settings = load_settings()
    try:
        roots = dict.fromkeys(
            p.resolve() for p in [settings.score_log_dir, *feast_log_dirs(settings), *(log_dir or [])]
        )
        written = compact(list(roots), days=days)
    except OSError as exc:
        raise fail(exc) from exc
    for path in written:
        out.print(f"compacted {path.parent.name}: {path}")
    if not written:
        console.print("nothing to compact: every finished day has one file at most")


def _print(data: dict[str, Any]) -> None:
    stream = data.get("label_stream")
    out.print(f"labels known: {data['labels_known']} transaction(s)" + (f"; {stream['note']}" if stream else ""))
    if not data["versions"]:
        console.print(f"no scores logged in the last {data['days']} day(s)")
        return
    table = Table(title=f"served scores, last {data['days']} day(s)")
    for column in ("model", "version", "day", "scores", "uncertain", "labelled", "fraud", "ROC-AUC", "PR-AUC",
                   "score PSI"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("model", "day") else "right")
    for version in data["versions"]:
        for day in version["days"]:
            quality = day["quality"]
            table.add_row(version["model"], str(version["version"]), day["day"], str(day["scores"]),
                          _fmt(day["uncertain_share"]), str(quality["labelled"]), str(quality["positives"]),
                          _fmt(quality["roc_auc"]), _fmt(quality["pr_auc"]), _fmt(day["score_psi"]))  # fmt: skip
        quality = version["quality"]
        table.add_row(version["model"], str(version["version"]), "all", str(version["scores"]),
                      _fmt(version["uncertain_share"]), str(quality["labelled"]), str(quality["positives"]),
                      _fmt(quality["roc_auc"]), _fmt(quality["pr_auc"]),
                      _fmt(version["drift"]["score"]["psi"]) if version["drift"]["score"] else "-",
                      end_section=True)  # fmt: skip
    out.print(table)
    for version in data["versions"]:
        name = f"{version['model']} v{version['version']}"
        for threshold, t in version["quality"]["at_thresholds"].items():
            out.print(f"{name}: at {threshold} >= {t['threshold']:.3f}: flagged {t['flagged']}, "
                      f"precision {_fmt(t['precision'])}, recall {_fmt(t['recall'])}")  # fmt: skip
        drift = version["drift"]
        if drift["reference"] is None:
            out.print(f"{name}: no drift reference: {drift['note']}")
            continue
        features = Table(title=f"{name} drift, worst first (PSI >= {data['psi_flag']} flagged)")
        features.add_column("feature")
        features.add_column("PSI", justify="right")
        features.add_column("nulls", justify="right")
        features.add_column("")
        for row in drift["features"][:15]:
            features.add_row(row["feature"], f"{row['psi']:.3f}", f"{row['null_share']:.3f}",
                             "[red]drift[/]" if row["flagged"] else "")  # fmt: skip
        out.print(features)
