"""``step-cache report``: compare finished runs in one Markdown + HTML page with figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import PROBES_PANEL, app
from cli.console import user_errors


@app.command(rich_help_panel=PROBES_PANEL)
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (train-probe) and/or sweep directories (sweep).")],
    out: Annotated[Path, typer.Option(help="Directory for report.md, report.html and figures/.")] = Path("report"),
    title: Annotated[str, typer.Option(help="Title of the page.")] = "step-cache report",
) -> None:
    """Write a comparison of runs (table, accuracy bars, per-class accuracy, confusion matrices, training curves;
    for sweeps their best trials and plots) as report.md and report.html with PNG figures, and print the table."""
    from step_cache.extras import require
    from step_cache.report import build_report
    from step_cache.report.build import (
        chance_lines,
        format_comparison,
        load_inputs,
        unretrained_lines,
        view_average_lines,
    )

    with user_errors():
        require("matplotlib", "step-cache report")
        markdown = build_report(runs, out, title=title)
        summaries, sweeps = load_inputs(runs)  # named as in report.md ("s1/best-run")
        for line in unretrained_lines(sweeps):
            typer.echo(line)
        if summaries:
            typer.echo(format_comparison(summaries))
        for line in chance_lines(summaries):  # "note: NAME (DIR): test top-1 not above chance (p = 0.41)"
            typer.echo(line)
        for line in view_average_lines(summaries):  # runs that combine a video's clips by different rules
            typer.echo(line)
    typer.echo(f"wrote {markdown} and {markdown.with_suffix('.html')}")
