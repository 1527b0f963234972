"""step-cache report: tables with the right numbers, figures that exist, Markdown and HTML that reference them."""

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.extras import MissingExtraError
from step_cache.report import build_report
from step_cache.report.build import ReportError, format_comparison, load_run
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.trainer import train_probe

_register_commands()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_token_cache(root / "cache", task="order", num_classes=2, videos_per_class=8, frames=4, dim=16)
    for probe in ("linear", "step"):
        train_probe([root / "cache"], probe, root / "runs" / probe, epochs=3, batch_size=8, progress=False)
    return root


def test_report_files_and_numbers(two_runs, tmp_path):
    runs = [two_runs / "runs" / "linear", two_runs / "runs" / "step"]
    markdown = build_report(runs, tmp_path / "rep", title="Demo")
    text = markdown.read_text()
    step = load_run(runs[1]).metrics
    row = next(line for line in text.splitlines() if line.startswith("| step |"))
    assert f"{100 * step['top1']:.1f}%" in row and f"{step['parameters_without_head']:,}" in row
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {
        "figures/comparison.png",
        "figures/curves.png",
        "figures/step-confusion.png",
        "figures/linear-per-class.png",
    } <= set(images)
    for image in images:
        data = (tmp_path / "rep" / image).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<table>" in html and "src='figures/comparison.png'" in html and "<h1>Demo</h1>" in html


def test_terminal_table_is_aligned(two_runs):
    table = format_comparison([load_run(two_runs / "runs" / p) for p in ("linear", "step")])
    lines = table.splitlines()
    assert lines[0].startswith("run") and "reversed top-1" in lines[0] and len({len(line) for line in lines}) == 1


def test_unfinished_or_missing_runs(tmp_path):
    with pytest.raises(ValueError, match="run directory does not exist"):
        build_report([tmp_path / "nope"], tmp_path / "rep")
    with pytest.raises(ReportError, match="at least one run"):
        build_report([], tmp_path / "rep")


def test_cli(two_runs, tmp_path):
    result = CliRunner().invoke(
        app,
        ["report", str(two_runs / "runs" / "linear"), str(two_runs / "runs" / "step"), "--out", str(tmp_path / "r")],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and (tmp_path / "r" / "report.html").exists()


def test_report_includes_a_sweep_with_its_best_run_and_figures(two_runs, tmp_path):
    from step_cache.sweeps.space import build_space
    from step_cache.sweeps.study import run_sweep

    space = build_space("step", ["lr=log:1e-3..1e-2", "weight_decay=0.0,0.1"])
    run_sweep(
        two_runs / "cache",
        "step",
        tmp_path / "sweep",
        space=space,
        trials=4,
        parallel=4,
        pruner="none",
        epochs=2,
        batch_size=8,
        progress=False,
    )
    markdown = build_report([two_runs / "runs" / "linear", tmp_path / "sweep"], tmp_path / "rep")
    text = markdown.read_text()
    assert "## Sweep sweep" in text and "| trial | lr | weight_decay |" in text
    assert "| sweep/best-run | step |" in text  # the sweep's retrained best configuration, named after its sweep
    assert "figures/sweep/parallel_coordinates.png" in text
    assert (tmp_path / "rep" / "figures" / "sweep" / "objective_vs_lr.png").is_file()


def test_without_matplotlib_the_report_is_a_one_line_error_naming_the_extra(two_runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    result = CliRunner().invoke(app, ["report", str(two_runs / "runs" / "step"), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "error: step-cache report needs matplotlib, which is not installed: pip install 'step-cache[report]'"
    ]
    with pytest.raises(MissingExtraError, match=r"pip install 'step-cache\[report\]'"):
        build_report([two_runs / "runs" / "step"], tmp_path / "rep")
    assert not (tmp_path / "rep").exists()


def diverged_copy(run: Path, out: Path, **bare: str) -> Path:
    """A copy of ``run`` whose metrics.json holds the given keys as bare JSON constants (``NaN``), as files
    written before strict JSON did after a run diverged; ``None`` removes the key."""
    shutil.copytree(run, out)
    metrics = json.loads((out / "metrics.json").read_text())
    text = json.dumps({k: v for k, v in metrics.items() if bare.get(k, "") is not None}, indent=2)
    for key, constant in bare.items():
        if constant is not None:
            text = re.sub(rf'"{key}": [^,\n]+', f'"{key}": {constant}', text, count=1)
    (out / "metrics.json").write_text(text)
    return out


def test_runs_with_non_finite_metrics_are_flagged_and_left_out(two_runs, tmp_path):
    good = two_runs / "runs" / "step"
    nan_loss = diverged_copy(good, tmp_path / "nan-loss", loss="NaN")  # NaN weights: NaN loss, top-1 at chance
    nan_top1 = diverged_copy(good, tmp_path / "nan-top1", top1="NaN")
    no_top1 = diverged_copy(good, tmp_path / "no-top1", top1=None)
    assert math.isnan(load_run(nan_loss).metrics["loss"])  # what json.loads makes of the legacy file
    markdown = build_report([good, nan_loss, nan_top1, no_top1], tmp_path / "rep")
    text = markdown.read_text()
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3
    for warning, name, why in zip(
        warnings, ("nan-loss", "nan-top1", "no-top1"), ("loss is nan", "top1 is nan", "top1 is missing"), strict=True
    ):
        assert warning.startswith(f"warning: {name} (") and f"metrics not finite: training diverged? ({why})" in warning
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| step |" in line]
    assert [row.split(" | ")[0] for row in rows] == ["| step"]  # the table: only the finite run
    assert "## step (step)" in text and "## nan-loss" not in text  # no per-run section or figures for them
    assert (
        not list((tmp_path / "rep" / "figures").glob("nan-*"))
        and "warning: nan-loss" in (tmp_path / "rep" / "report.html").read_text()
    )
    table = format_comparison([load_run(d) for d in (good, nan_loss)])
    assert table.splitlines()[2].startswith("step ") and table.splitlines()[-1].startswith("warning: nan-loss (")
    assert len(table.splitlines()) == 4  # header, rule, one row, one warning


def test_a_report_with_no_finite_run_is_a_clear_error(two_runs, tmp_path):
    bad = diverged_copy(two_runs / "runs" / "linear", tmp_path / "diverged", loss="NaN")
    with pytest.raises(ReportError, match=r"no run to compare: .*diverged: metrics not finite: training diverged\?"):
        build_report([bad], tmp_path / "rep")
    result = CliRunner().invoke(app, ["report", str(bad), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 1 and result.output.startswith("error: no run to compare"), result.output


def test_a_sweep_without_a_retrained_best_run_is_reported_by_its_trials(two_runs, tmp_path):
    # sweep --no-retrain leaves no run; report used to answer "no finished training run among the directories given"
    from step_cache.sweeps.space import build_space
    from step_cache.sweeps.study import run_sweep

    space = build_space("linear", ["lr=log:1e-3..1e-2"])
    run_sweep(two_runs / "cache", "linear", tmp_path / "sweep", space=space, trials=2, parallel=2, pruner="none",
              epochs=2, batch_size=8, progress=False, retrain=False)  # fmt: skip
    assert not (tmp_path / "sweep" / "best-run").exists()
    markdown = build_report([tmp_path / "sweep"], tmp_path / "rep")
    text = markdown.read_text()
    assert (
        "## Sweep sweep" in text
        and "| trial | lr | val top1 |" in text
        and text.count("\n| 0 |") + text.count("\n| 1 |") == 2
    )
    assert "no retrained best run" in text
    result = CliRunner().invoke(app, ["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'sweep'}: a sweep with no retrained best run (sweep --no-retrain): its trials only" in (
        result.output
    )
    assert (tmp_path / "cli" / "report.html").is_file()
    with pytest.raises(ReportError, match="give at least one run or sweep directory"):
        build_report([], tmp_path / "none")
