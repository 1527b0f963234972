"""Run directories loaded for a report: their config, metrics.json (format 2, ``metrics_file``) and history, why a
run is left out of comparisons, and the names runs go by (the same in report.md and the terminal)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from step_cache.errors import StepCacheError
from step_cache.training import runs as run_files
from step_cache.training.chance import chance_note
from step_cache.training.metrics import LEGACY_VIEW_AVERAGE, format_percent
from step_cache.training.records import headline_figures, run_chance
from step_cache.training.run_status import failure, unfinished


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
        """(split, figures, std or None): the figures to report (``metrics.json``'s top level: test when the run
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


def view_average_lines(summaries: Sequence[RunSummary]) -> list[str]:
    """A note when the compared runs combine a video's clips and test views by different rules (``--view-average``):
    on a multi-clip cache their per-video figures then differ by the rule too, not only by the probe."""
    rules = {s.name: s.metrics.get("view_average", LEGACY_VIEW_AVERAGE) for s in comparable(summaries)[0]}
    if len(set(rules.values())) < 2:
        return []
    named = ", ".join(f"{name}: {rule}" for name, rule in rules.items())
    return [f"note: the runs average a video's clips and views by different rules ({named}; --view-average)"]


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


def run_names(directories: Sequence[Path]) -> list[str]:
    """How the report and the terminal name runs: a directory's name, a sweep's retrained run after its sweep."""
    # a sweep's retrained run is named after its sweep ("step-sweep/best-run"), not a bare "best-run"
    names = [f"{d.parent.name}/{d.name}" if d.name == "best-run" else d.name for d in directories]
    if len(set(names)) < len(names):  # e.g. a/step and b/step
        names = [f"{d.parent.name}/{d.name}" for d in directories]
    return names


def cell(value: Any, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if kind == "pct":
        return format_percent(value)
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:.1f} s"
