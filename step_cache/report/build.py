"""Read run directories, tabulate them, draw their figures and write report.md / report.html."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from step_cache.extras import require
from step_cache.interface import option
from step_cache.report.document import Block, Heading, Paragraph, Table, to_html, to_markdown
from step_cache.report.summaries import (
    ReportError,
    RunSummary,
    cell,
    chance_lines,
    comparable,
    excluded_lines,
    load_run,
    run_names,
    view_average_lines,
)
from step_cache.training.metrics import TOP_K, format_percent_spread

__all__ = [
    "ReportError",
    "build_report",
    "chance_lines",
    "comparison_rows",
    "format_comparison",
    "load_inputs",
    "load_run",
    "view_average_lines",
]

# (column title, metrics.json key, kind) — the comparison table everywhere (report, demo, terminal).
COLUMNS = [
    ("top-1", "top1", "pct"),
    ("top-5", "top5", "pct"),
    ("mean class", "mean_class_accuracy", "pct"),
    ("pair acc", "pair_accuracy", "pct"),
    ("reversed top-1", "reversed_top1", "pct"),
    ("reversed pair", "reversed_pair_accuracy", "pct"),
    ("shuffled top-1", "shuffled_top1", "pct"),
    ("params", "parameters_without_head", "int"),
    ("train time", "train_time_s", "seconds"),
]


def shown_columns(summaries: Sequence[RunSummary]) -> list[tuple[str, str, str]]:
    """``COLUMNS`` less top-5 when no run has more than 5 classes (every class is then among the top 5)."""
    most = max((len(s.metrics.get("classes") or ()) for s in summaries), default=0)
    return [column for column in COLUMNS if column[1] != "top5" or most > TOP_K]


def comparison_rows(summaries: Sequence[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """The comparison table's header and rows; runs whose metrics are not finite are left out (``excluded_lines``
    says which and why)."""
    compared = comparable(summaries)[0]
    columns = shown_columns(compared)
    header = ["run", "probe", "split", "seeds", *(title for title, _, _ in columns)]
    rows = []
    for s in compared:
        split, figures, std = s.headline
        cells = []
        for _, key, kind in columns:
            if kind != "pct":  # cost columns: the run's own
                cells.append(cell(s.metrics.get(key), kind))
            elif std is not None and figures.get(key) is not None and std.get(key) is not None:
                cells.append(format_percent_spread(figures[key], std[key]))
            else:
                cells.append(cell(figures.get(key), kind))
        seeds = len(s.metrics.get("seeds", [0]))
        varied = f" ({s.metrics.get('vary', 'init')})" if seeds > 1 else ""  # what the std measures
        rows.append([s.name, s.metrics.get("probe", "?"), split, f"{seeds}{varied}", *cells])
    return header, rows


def format_comparison(summaries: Sequence[RunSummary]) -> str:
    """The comparison table as aligned plain text, for terminals, followed by a warning line for each run left
    out because its metrics are not finite."""
    header, rows = comparison_rows(summaries)
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, *excluded_lines(summaries)])


def is_sweep(directory: str | Path) -> bool:
    return (Path(directory) / "trials.json").is_file()


def split_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(training runs to compare, sweeps): a sweep contributes its retrained ``best-run`` to the runs."""
    sweeps = [Path(p) for p in paths if is_sweep(p)]
    runs = [Path(p) for p in paths if not is_sweep(p)]
    runs += [s / "best-run" for s in sweeps if (s / "best-run" / "metrics.json").is_file()]
    return runs, sweeps


def unretrained_lines(sweeps: Sequence[Path]) -> list[str]:
    """One line per sweep that has no retrained best run (``sweep --no-retrain``): the report shows its trials."""
    return [
        f"{s}: a sweep with no retrained best run (sweep --no-retrain): its trials only"
        for s in sweeps
        if not (s / "best-run" / "metrics.json").is_file()
    ]


def build_report(
    run_dirs: Sequence[str | Path], out: str | Path, title: str = "step-cache report", notes: Sequence[str] = ()
) -> Path:
    """Write ``out/report.md``, ``out/report.html`` and ``out/figures/*.png`` for the given runs; returns the
    Markdown path. Every run must have finished (``metrics.json``). A directory written by ``step-cache sweep``
    (it holds ``trials.json``) adds a sweep section with its best trials and figures, and its ``best-run`` (a sweep
    given alone without one, ``--no-retrain``, makes a report of its trials only).

    Every figure of a run shows its headline split (``metrics_file``: the mean over seeds, matrices pooled over
    them) and its caption names that split and the seeds. A run that failed (``failed.json``: it diverged) or whose
    headline metrics are not finite (``metrics_problem``) is left out of the table and the figures, with a warning
    line in the report naming it and why; when no run is left, ReportError."""
    require("matplotlib", "the report (its figures)")
    from step_cache.report.sections import comparison_figures, run_blocks, sweep_blocks

    loaded, sweeps = load_inputs(run_dirs)
    summaries = _compared(loaded) if loaded else []
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if summaries:
        blocks = _introduction(title, summaries, loaded, notes)
    else:  # only sweeps trained with --no-retrain: their trials and figures
        blocks = [Heading(title, 1), *(Paragraph(line) for line in [*notes, *unretrained_lines(sweeps)])]
    blocks += comparison_figures(summaries, out) if summaries else []
    for summary in summaries:
        blocks += run_blocks(summary, out)
    for sweep in sweeps:
        blocks += sweep_blocks(sweep, out)
    markdown = out / "report.md"
    markdown.write_text(to_markdown(blocks), encoding="utf-8")
    (out / "report.html").write_text(to_html(blocks, title), encoding="utf-8")
    return markdown


def load_inputs(run_dirs: Sequence[str | Path]) -> tuple[list[RunSummary], list[Path]]:
    """(every run given or retrained by a sweep given, loaded and named as everywhere: ``run_names``; the sweeps)."""
    if not run_dirs:
        raise ReportError("give at least one run or sweep directory")
    directories, sweeps = split_inputs(run_dirs)
    if not directories and not sweeps:
        raise ReportError("no finished training run among the directories given")
    return [load_run(d, n) for d, n in zip(directories, run_names(directories), strict=True)], sweeps


def _compared(loaded: Sequence[RunSummary]) -> list[RunSummary]:
    summaries, excluded = comparable(loaded)
    if not summaries:
        raise ReportError(
            "no run to compare: every run failed or has metrics that are not finite ("
            + "; ".join(f"{s.name}: {s.problem}" for s in excluded)
            + f"); retrain with a lower {option('lr')}"
        )
    return summaries


def _introduction(
    title: str, summaries: Sequence[RunSummary], loaded: Sequence[RunSummary], notes: Sequence[str]
) -> list[Block]:
    """The title, what the figures are, the notes and warnings (runs left out, runs not above chance), the table."""
    header, rows = comparison_rows(summaries)
    return [
        Heading(title, 1),
        Paragraph(
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(summaries)} run(s). Accuracies are per video "
            "(its clips and test views combined by each run's --view-average: mean softmax by default), "
            "on the split named in the 'split' column: 'test' when the cache has a test split (the checkpoint was "
            "chosen on validation, so these figures were not selected on), else 'val' (the same figures that chose "
            "the checkpoint: optimistic). With several seeds a cell is the mean ± sample std over seeds, the "
            "'seeds' column says what varied between them (init: initial weights only, the same batches and val "
            "hold-out; data: batch order too, and the val hold-out where one was drawn), and "
            "error bars in the figure show the std; a run's confusion matrix and per-class accuracy pool its "
            "seeds' videos of that split. 'reversed' and 'shuffled' re-evaluate the same clips with "
            "their frames reversed / shuffled: a probe that reads frame order drops there, an order-blind probe "
            "does not. 'pair acc' decides each clip of a mirrored class pair between the two classes only. A run "
            "whose top-1 is not above chance (one-sided binomial test against the majority-class rate, p >= 0.05) "
            "is named in a note."
        ),
        *(Paragraph(note) for note in notes),
        *(Paragraph(line) for line in excluded_lines(loaded)),
        *(Paragraph(line) for line in chance_lines(summaries)),
        *(Paragraph(line) for line in view_average_lines(summaries)),
        Heading("Comparison"),
        Table(header, rows, align_right=set(range(2, len(header)))),
    ]
