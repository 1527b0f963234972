"""metrics.json format 2 (the headline first) and format 1 files still read; prepare's group-aware hold-out; names
and notes that match what the user asked for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.catalog import VideoItem
from step_cache.datasets.groups import group_key, video_groups
from step_cache.datasets.holdout import holdout
from step_cache.report import build_report
from step_cache.report.build import format_comparison, load_inputs
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training import runs
from step_cache.training.evaluation import evaluate
from step_cache.training.metrics_file import MetricsFormatError, upgrade
from step_cache.training.trainer import train_probe

_register_commands()
DATA = Path(__file__).parent / "data"
# The settings the format-1 files in tests/data were written with (by the release before format 2).
FIXTURE_RUN = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def version_1_runs(tmp_path_factory):
    """Runs of the fixtures' settings whose metrics.json is replaced by the format-1 file written for them."""
    root = tmp_path_factory.mktemp("v1")
    write_token_cache(root / "cache", videos_per_class=10, dim=16, val_every=4, test_every=5)
    train_probe(root / "cache", "linear", root / "one", **FIXTURE_RUN)
    train_probe(root / "cache", "linear", root / "two", seeds=2, **FIXTURE_RUN)
    shutil.copy(DATA / "metrics_v1_one_seed.json", root / "one" / "metrics.json")
    shutil.copy(DATA / "metrics_v1_two_seeds.json", root / "two" / "metrics.json")
    return root


def test_version_1_files_read_with_their_test_figures_as_the_headline(version_1_runs):
    old_one = json.loads((DATA / "metrics_v1_one_seed.json").read_text())
    old_two = json.loads((DATA / "metrics_v1_two_seeds.json").read_text())
    assert "format_version" not in old_one and old_one["top1"] != old_one["test"]["top1"]  # val at the top level
    one = runs.read_final_metrics(version_1_runs / "one")
    assert one["format_version"] == 2 and one["upgraded_from"] == 1 and one["seeds"] == [0]
    assert one["top1"] == old_one["test"]["top1"] and one["confusion_matrix"] == old_one["test"]["confusion_matrix"]
    assert one["splits"]["val"]["top1"] == old_one["top1"] and one["chance"] == old_one["chance"]
    two = runs.read_final_metrics(version_1_runs / "two")
    assert two["top1"] == old_two["mean"]["test"]["top1"] and two["std"]["top1"] == old_two["std"]["test"]["top1"]
    assert two["pooled_seeds"] == [0]  # format 1 kept the first seed's matrix only
    assert [s["test"]["top1"] for s in two["per_seed"]] == [s["test"]["top1"] for s in old_two["per_seed"]]
    assert upgrade(two) is two  # format 2 reads as it is


def test_report_and_evaluate_read_version_1_runs(version_1_runs, tmp_path):
    markdown = build_report([version_1_runs / "one", version_1_runs / "two"], tmp_path / "rep").read_text()
    assert "one: confusion matrix (test split, seed 0)" in markdown
    assert "two: confusion matrix (test split, seed 0)" in markdown  # format 1: the first seed's matrix
    table = format_comparison(load_inputs([version_1_runs / "one", version_1_runs / "two"])[0])
    old_two = json.loads((DATA / "metrics_v1_two_seeds.json").read_text())
    mean, std = old_two["mean"]["test"]["top1"], old_two["std"]["test"]["top1"]
    assert f"{100 * mean:.1f} ± {100 * std:.1f}%" in table.splitlines()[3]
    evaluated = evaluate(version_1_runs / "two", version_1_runs / "cache")
    assert evaluated["split"] == "test" and evaluated["seeds"] == [0, 1]


def test_a_newer_format_is_refused_by_name():
    with pytest.raises(MetricsFormatError, match="format_version 3 is newer than this step-cache reads"):
        upgrade({"format_version": 3, "top1": 0.5}, path="runs/x/metrics.json")


def test_group_keys_join_mirrored_copies_and_ucf101_groups():
    assert group_key("forward/bikes_3.mp4") == group_key("backward/bikes_3.mp4") == "bikes_3"
    assert group_key("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi") == "v_ApplyEyeMakeup_g08"
    groups = video_groups(["b/x.mp4", "a/x.mp4", "a/y.mp4", "v_A_g01_c01.avi", "v_A_g01_c02.avi", "v_A_g02_c01.avi"])
    assert groups["a/x.mp4"] == groups["b/x.mp4"] == "a/x.mp4" and groups["a/y.mp4"] == "a/y.mp4"
    assert groups["v_A_g01_c01.avi"] == groups["v_A_g01_c02.avi"] != groups["v_A_g02_c01.avi"]


def test_holdout_never_splits_a_group_and_counts_the_groups_kept():
    mirrored = [VideoItem(f"{label}/clip_{i}.mp4", label) for i in range(9) for label in ("forward", "backward")]
    ucf = [VideoItem(f"Jump/v_Jump_g{g:02d}_c{c:02d}.avi", "Jump") for g in range(1, 7) for c in range(1, 4)]
    for seed in range(5):
        held = holdout([*mirrored, *ucf], val_fraction=0.34, test_fraction=0.34, seed=seed)
        split = {item.path: item.split for item in held.items}
        assert all(split[f"forward/clip_{i}.mp4"] == split[f"backward/clip_{i}.mp4"] for i in range(9))
        for g in range(1, 7):
            assert len({split[f"Jump/v_Jump_g{g:02d}_c{c:02d}.avi"] for c in range(1, 4)}) == 1
        assert held.groups_kept == 9 + 6
        # a third of the 9 mirrored groups each to val and test, both classes alike
        assert sorted(split[f"forward/clip_{i}.mp4"] for i in range(9)).count("test") == 3
    # Videos without a group are drawn as before groups existed: each is its own group, named by its path.
    lone = [VideoItem(f"{label}/{label}_{i}.mp4", label) for i in range(6) for label in ("open", "close")]
    held = holdout(lone, val_fraction=0.5, seed=1)
    assert held.groups_kept == 0 and [i.split for i in held.items].count("val") == 6


def test_prepare_summary_says_how_many_groups_it_kept_together(tmp_path):
    from step_cache.datasets import prepare

    for i in range(4):
        for label in ("forward", "backward"):
            (tmp_path / "v" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "v" / label / f"clip_{i}.mp4").write_bytes(b"x")
    prepared = prepare("folder", tmp_path / "v", tmp_path / "a.csv", test_fraction=0.25, progress=False)
    assert prepared.groups_kept == 4 and "held out by group: 4 group(s) of several videos" in prepared.summary()
    assert "held out by group" not in prepare("folder", tmp_path / "v", tmp_path / "b.csv", progress=False).summary()


def test_report_terminal_names_a_sweeps_retrained_run_as_the_report_does(version_1_runs, tmp_path):
    sweep = tmp_path / "s1"
    shutil.copytree(version_1_runs / "one", sweep / "best-run")
    (sweep / "trials.json").write_text(json.dumps({"metric": "top1", "direction": "maximize", "space": {},
                                                   "trials": []}))  # fmt: skip
    result = CliRunner().invoke(app, ["report", str(sweep), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2].startswith("s1/best-run ")
    assert "## s1/best-run (linear)" in (tmp_path / "rep" / "report.md").read_text()


def test_the_schedule_never_plans_a_batch_larger_than_the_training_set(tmp_path):
    write_token_cache(tmp_path / "cache", videos_per_class=9, dim=16, val_every=3, test_every=4)
    result = train_probe(tmp_path / "cache", "linear", tmp_path / "run", epochs=2, progress=False)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    train = record["data"]["splits"]["train"]
    assert train < 16 and record["config"]["batch_size"] == train
    assert result.metrics["epochs_trained"] == 2 and np.isfinite(result.metrics["loss"])
