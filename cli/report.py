"""``step-cache report``: compare finished runs in one Markdown + HTML page with figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.console import user_errors
from cli.main import app
from cli.train import PANEL


@app.command(rich_help_panel=PANEL)
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (train-probe) and/or sweep directories (sweep).")],
    out: Annotated[Path, typer.Option(help="Directory for report.md, report.html and figures/.")] = Path("report"),
    title: Annotated[str, typer.Option(help="Title of the page.")] = "step-cache report",
) -> None:
    """Write a comparison of runs (table, accuracy bars, per-class accuracy, confusion matrices, training curves;
    for sweeps their best trials and plots) as report.md and report.html with PNG figures, and print the table."""
    from step_cache.report import build_report
    from step_cache.report.build import format_comparison, is_sweep, load_run

    with user_errors():
        markdown = build_report(runs, out, title=title)
        finished = [run for run in runs if not is_sweep(run)]
        finished += [
            run / "best-run" for run in runs if is_sweep(run) and (run / "best-run" / "metrics.json").is_file()
        ]
        typer.echo(format_comparison([load_run(run) for run in finished]))
    typer.echo(f"wrote {markdown} and {markdown.with_suffix('.html')}")
