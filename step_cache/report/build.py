"""Read run directories, tabulate them, draw their figures and write report.md / report.html."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from step_cache.errors import StepCacheError
from step_cache.extras import require
from step_cache.report.document import Block, Heading, Image, Paragraph, Table, to_html, to_markdown
from step_cache.training import runs as run_files
from step_cache.training.chance import chance_note
from step_cache.training.metrics import format_percent, format_percent_spread
from step_cache.training.records import headline_figures, run_chance
from step_cache.training.run_status import failure, unfinished

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


class ReportError(StepCacheError, ValueError):
    """A run directory that cannot be reported (not a run, or a run that never finished)."""


# A run is compared only when these metrics.json values are finite numbers: a run that diverged has NaN logits,
# hence a NaN loss, while its top-1 (argmax of NaNs) can look like a plain chance-level number.
HEADLINE = ("top1", "loss")
OPTIONAL_HEADLINE = ("loss",)  # may be missing in older files; top1 never is


@dataclass
class RunSummary:
    name: str
    directory: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    failure: str | None = None  # the reason a failed run (failed.json) failed

    @property
    def headline(self) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        """(split, figures, std or None): the figures to report (``records.headline_metrics``: test when the run
        has a test split), as the mean over seeds with their std for a multi-seed run."""
        return headline_figures(self.metrics)

    @property
    def problem(self) -> str | None:
        """Why this run is left out of comparisons (None when it is not): it failed, or its headline metrics are
        not finite."""
        if self.failure is not None:
            return f"the run failed ({self.failure})"
        return metrics_problem(self.metrics)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metrics_problem(metrics: dict[str, Any]) -> str | None:
    """Why ``metrics`` (a metrics.json) cannot be compared, or None: "metrics not finite: training diverged? (...)"
    when a headline metric (``HEADLINE``) is missing, None or not a finite number — including the bare ``NaN``
    that metrics.json files written before strict JSON may hold (``json.loads`` reads it as a float NaN)."""
    bad = [
        f"{key} is {metrics.get(key, 'missing')}"
        for key in HEADLINE
        if not _finite_number(metrics.get(key)) and (key in metrics or key not in OPTIONAL_HEADLINE)
    ]
    return f"metrics not finite: training diverged? ({', '.join(bad)})" if bad else None


def comparable(summaries: Sequence[RunSummary]) -> tuple[list[RunSummary], list[RunSummary]]:
    """(runs to compare, runs left out because their metrics are not finite)."""
    return [s for s in summaries if s.problem is None], [s for s in summaries if s.problem is not None]


def excluded_lines(summaries: Sequence[RunSummary]) -> list[str]:
    """One warning line per run left out of the comparison, naming it and why."""
    return [f"warning: {s.name} ({s.directory}) left out: {s.problem}" for s in summaries if s.problem is not None]


def chance_lines(summaries: Sequence[RunSummary]) -> list[str]:
    """One note per compared run whose headline top-1 is not above chance (``chance.py``; pooled over seeds)."""
    lines = []
    for s in comparable(summaries)[0]:
        note = chance_note(run_chance(s.metrics))
        if note:
            split = s.headline[0]
            lines.append(f"note: {s.name} ({s.directory}): {split} top-1{note.removeprefix(' |')}")
    return lines


def load_run(directory: str | Path, name: str | None = None) -> RunSummary:
    directory = Path(directory)
    config = run_files.read_config(directory)
    reason = failure(directory)
    if reason is not None:  # listed as failed, with its reason, and left out of the comparison
        return RunSummary(name or directory.name, directory, config, {}, [], failure=reason)
    metrics = run_files.read_final_metrics(directory)
    if metrics is None:
        raise ReportError(f"{unfinished(directory)} (no metrics.json yet)")
    return RunSummary(name or directory.name, directory, config, metrics, run_files.read_epoch_log(directory))


def _names(directories: Sequence[Path]) -> list[str]:
    # a sweep's retrained run is named after its sweep ("step-sweep/best-run"), not a bare "best-run"
    names = [f"{d.parent.name}/{d.name}" if d.name == "best-run" else d.name for d in directories]
    if len(set(names)) < len(names):  # e.g. a/step and b/step
        names = [f"{d.parent.name}/{d.name}" for d in directories]
    return names


def _cell(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return format_percent(value)
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:.1f} s"


def comparison_rows(summaries: Sequence[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """The comparison table's header and rows; runs whose metrics are not finite are left out (``excluded_lines``
    says which and why)."""
    header = ["run", "probe", "split", "seeds", *(title for title, _, _ in COLUMNS)]
    rows = []
    for s in comparable(summaries)[0]:
        split, figures, std = s.headline
        cells = []
        for _, key, kind in COLUMNS:
            if kind != "pct":  # cost columns: the run's own
                cells.append(_cell(s.metrics.get(key), kind))
            elif std is not None and figures.get(key) is not None and std.get(key) is not None:
                cells.append(format_percent_spread(figures[key], std[key]))
            else:
                cells.append(_cell(figures.get(key), kind))
        rows.append([s.name, s.metrics.get("probe", "?"), split, str(len(s.metrics.get("seeds", [0]))), *cells])
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


def sweep_blocks(sweep_dir: Path, out: Path, top: int = 10) -> list[Block]:
    """A sweep's section: its best trials and its figures (objective vs each parameter, parallel coordinates)."""
    import shutil

    from step_cache.sweeps.plots import sweep_figures
    from step_cache.sweeps.results import read_trials

    content = read_trials(sweep_dir / "trials.json", tables=True)  # a file of another shape: one line naming it
    trials = [t for t in content["trials"] if t["state"] == "COMPLETE" and t.get("value") is not None]
    names = [n for n, spec in content["space"].items() if spec["type"] != "fixed"]
    header = ["trial", *names, f"val {content['metric']}", "pair acc", "reversed top-1"]
    rows = [
        [
            str(t["number"]),
            *(
                f"{t['params'].get(n)}" if not isinstance(t["params"].get(n), float) else f"{t['params'][n]:.3g}"
                for n in names
            ),
            _cell(t["value"], "pct"),
            _cell(t.get("metrics", {}).get("pair_accuracy"), "pct"),
            _cell(t.get("metrics", {}).get("reversed_top1"), "pct"),
        ]
        for t in trials[:top]
    ]
    blocks: list[Block] = [
        Heading(f"Sweep {sweep_dir.name}"),
        Paragraph(
            f"{sweep_dir}: {len(content['trials'])} trials ({len(trials)} completed), objective val "
            f"{content['metric']} ({content['direction']}); best {min(top, len(trials))} shown."
        ),
        Table(header, rows, align_right=set(range(len(header)))),
    ]
    target = out / "figures" / sweep_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for figure in sweep_figures(sweep_dir):
        copied = Path(shutil.copy(figure, target / figure.name))
        blocks.append(Image(copied.relative_to(out).as_posix(), figure.stem.replace("_", " ")))
    return blocks


def build_report(
    run_dirs: Sequence[str | Path], out: str | Path, title: str = "step-cache report", notes: Sequence[str] = ()
) -> Path:
    """Write ``out/report.md``, ``out/report.html`` and ``out/figures/*.png`` for the given runs; returns the
    Markdown path. Every run must have finished (``metrics.json``). A directory written by ``step-cache sweep``
    (it holds ``trials.json``) adds a sweep section with its best trials and figures, and its ``best-run``.

    A run that failed (``failed.json``: it diverged) or whose headline metrics are not finite (``metrics_problem``)
    is left out of the table and the figures, with a warning line in the report naming it and why; when no run is
    left, ReportError."""
    require("matplotlib", "the report (its figures)")
    from step_cache.report import figures

    if not run_dirs:
        raise ReportError("give at least one run or sweep directory")
    directories, sweeps = split_inputs(run_dirs)
    if not directories:
        raise ReportError("no finished training run among the directories given")
    loaded = [load_run(d, n) for d, n in zip(directories, _names(directories), strict=True)]
    summaries, excluded = comparable(loaded)
    warnings = excluded_lines(loaded)  # in the report; callers printing format_comparison show them there too
    if not summaries:
        raise ReportError(
            "no run to compare: every run failed or has metrics that are not finite ("
            + "; ".join(f"{s.name}: {s.problem}" for s in excluded)
            + "); retrain with a lower --lr"
        )
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)

    def figure_path(name: str) -> Path:
        return out / "figures" / (name.replace("/", "_") + ".png")

    header, rows = comparison_rows(summaries)
    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {len(summaries)} run(s). Accuracies are per video, "
            "on the split named in the 'split' column: 'test' when the cache has a test split (the checkpoint was "
            "chosen on validation, so these figures were not selected on), else 'val' (the same figures that chose "
            "the checkpoint: optimistic). With several seeds a cell is the mean ± sample std over seeds, and "
            "error bars in the figure show the std. 'reversed' and 'shuffled' re-evaluate the same clips with "
            "their frames reversed / shuffled: a probe that reads frame order drops there, an order-blind probe "
            "does not. 'pair acc' decides each clip of a mirrored class pair between the two classes only. A run "
            "whose top-1 is not above chance (one-sided binomial test against the majority-class rate, p >= 0.05) "
            "is named in a note."
        ),
        *(Paragraph(note) for note in notes),
        *(Paragraph(line) for line in warnings),
        *(Paragraph(line) for line in chance_lines(summaries)),
        Heading("Comparison"),
        Table(header, rows, align_right=set(range(2, len(header)))),
    ]
    shown = [("top-1", "top1"), ("pair acc", "pair_accuracy"), ("reversed top-1", "reversed_top1"),
             ("reversed pair", "reversed_pair_accuracy")]  # fmt: skip
    headlines = [s.headline for s in summaries]
    splits = sorted({split for split, _, _ in headlines})
    bars = figures.comparison_bars(
        [s.name for s in summaries],
        {label: [figures_.get(key) for _, figures_, _ in headlines] for label, key in shown},
        figure_path("comparison"),
        errors={label: [(std or {}).get(key) for _, _, std in headlines] for label, key in shown},
        split=" / ".join(splits),
        chance=[(run_chance(s.metrics) or {}).get("level") for s in summaries],
    )
    blocks.append(
        Image(bars.relative_to(out).as_posix(), f"Accuracy per run ({' / '.join(splits)}), as is and reversed")
    )
    if any(s.history for s in summaries):
        curves = figures.training_curves({s.name: s.history for s in summaries if s.history}, figure_path("curves"))
        blocks += [Heading("Training curves"), Image(curves.relative_to(out).as_posix(), "Loss and val top-1")]
    for summary in summaries:
        blocks.append(Heading(f"{summary.name} ({summary.metrics.get('probe')})"))
        config = summary.config.get("config", {})
        settings = ", ".join(
            f"{k}={config[k]}" for k in ("epochs", "lr", "weight_decay", "batch_size", "seed", "seeds") if k in config
        )
        blocks.append(Paragraph(f"{summary.directory} — {settings}; best epoch {summary.metrics.get('best_epoch')}"))
        per_class = summary.metrics.get("per_class_accuracy") or {}
        if per_class:
            path = figures.per_class_bars(summary.name, per_class, figure_path(f"{summary.name}-per-class"))
            blocks.append(Image(path.relative_to(out).as_posix(), f"{summary.name}: per-class accuracy"))
        matrix, classes = summary.metrics.get("confusion_matrix"), summary.metrics.get("classes")
        if matrix and classes:
            path = figures.confusion(summary.name, matrix, classes, figure_path(f"{summary.name}-confusion"))
            blocks.append(Image(path.relative_to(out).as_posix(), f"{summary.name}: confusion matrix"))
    for sweep in sweeps:
        blocks += sweep_blocks(sweep, out)
    markdown = out / "report.md"
    markdown.write_text(to_markdown(blocks), encoding="utf-8")
    (out / "report.html").write_text(to_html(blocks, title), encoding="utf-8")
    return markdown
