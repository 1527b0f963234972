"""Figures a user can trust: the automatic schedule, test figures as the headline, several seeds as mean ± std."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from step_cache.checkpoints import load_state_dict_file
from step_cache.report.build import format_comparison, load_run
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.metrics_file import split_figures
from step_cache.training.schedule import (
    AUTO_MIN_EPOCHS,
    AUTO_MIN_STEPS,
    auto_batch_size,
    resolve_schedule,
    schedule_steps,
)
from step_cache.training.trainer import train_probe

FAST = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def split_cache(tmp_path_factory):
    """The order task with a val and a test split (every 4th video val, every 5th test)."""
    directory = tmp_path_factory.mktemp("split-tokens")
    write_token_cache(directory, videos_per_class=10, dim=16, val_every=4, test_every=5)
    return directory


@pytest.mark.parametrize("train_clips", [1, 20, 180, 317, 1000, 5000, 200_000])
def test_auto_schedule_has_enough_steps_on_any_dataset_size(train_clips):
    epochs, batch = resolve_schedule(None, None, train_clips)
    assert batch in (16, 32, 64) or batch == train_clips < 16  # never a batch larger than the training set
    total, _ = schedule_steps(epochs, train_clips, batch, warmup_epochs=1.0)
    assert epochs >= AUTO_MIN_EPOCHS
    # Enough optimizer steps, unless the epoch cap binds (only for a handful of clips).
    assert total >= AUTO_MIN_STEPS or epochs == 1000
    if train_clips >= 16 * 64:
        assert batch == 64 and epochs == AUTO_MIN_EPOCHS  # large sets keep the usual 30 epochs at batch 64


def test_auto_batch_is_smaller_for_small_sets_and_given_values_win():
    assert auto_batch_size(180) == 16 and auto_batch_size(317) == 16 and auto_batch_size(600) == 32
    assert auto_batch_size(44) == 16  # the floor: batch 8 under-trained the attentive probe on small sets
    # ... unless the training set is smaller: 12 clips train in one batch of 12, not a planned "batch 16"
    assert auto_batch_size(12) == 12 and auto_batch_size(1) == 1 and auto_batch_size(16) == 16
    # The case from the issue: 180 clips, 30 epochs at batch 64 were 90 steps; auto gives >= 1500.
    epochs, batch = resolve_schedule(None, None, 180)
    assert schedule_steps(epochs, 180, batch, 1.0)[0] >= 1500
    assert resolve_schedule(7, 5, 180) == (7, 5)
    assert resolve_schedule(7, None, 180) == (7, 16)
    assert resolve_schedule(None, 8, 180)[1] == 8  # a given batch below the floor is kept


def test_config_records_the_resolved_schedule(split_cache, tmp_path):
    train_probe(split_cache, "linear", tmp_path / "run", lr=3e-3, progress=False, epochs=2)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    train = record["data"]["splits"]["train"]
    assert record["config"]["epochs"] == 2 and record["config"]["batch_size"] == auto_batch_size(train)
    schedule = record["data"]["schedule"]
    assert schedule["auto"] == ["batch_size"] and schedule["epochs"] == 2
    assert schedule["optimizer_steps"] == 2 * math.ceil(train / schedule["batch_size"])


def test_default_learning_rate_is_per_probe_and_a_given_one_wins():
    assert make_config("linear", {}).lr == 1e-2
    assert {make_config(p, {}).lr for p in ("attentive", "self-attentive", "step")} == {1e-3}
    assert make_config("linear", {"lr": 3e-4}).lr == 3e-4


@pytest.mark.parametrize("lr", [math.inf, math.nan, 0.0, -1.0])
def test_lr_must_be_finite_and_positive(lr):
    with pytest.raises(TrainConfigError, match="lr must be a finite number > 0"):
        make_config("step", {"lr": lr})


def test_headline_is_test_when_the_cache_has_a_test_split(split_cache, tmp_path):
    result = train_probe(split_cache, "step", tmp_path / "run", **FAST)
    metrics = result.metrics
    # metrics.json opens with the headline: its top level is the test split's figures, the splits sit below.
    assert metrics["format_version"] == 2 and metrics["headline_split"] == "test" and metrics["seeds"] == [0]
    assert metrics["top1"] == metrics["splits"]["test"]["top1"] == metrics["per_seed"][0]["test"]["top1"]
    assert metrics["videos"] == 4 and metrics["figures"] == "test split, seed 0"  # 2 classes x 2 test videos
    assert metrics["confusion_matrix"] == metrics["per_seed"][0]["test"]["confusion_matrix"]
    assert "std" not in metrics and "test" not in metrics
    assert result.summary().startswith(f"step: test top-1 {100 * metrics['top1']:.1f}%")
    table = format_comparison([load_run(tmp_path / "run")])
    assert table.splitlines()[2].split()[2:4] == ["test", "1"]


def test_headline_is_val_and_says_so_without_a_test_split(tmp_path):
    write_token_cache(tmp_path / "cache", videos_per_class=6, dim=16, val_every=3)
    result = train_probe(tmp_path / "cache", "linear", tmp_path / "run", **FAST)
    assert result.metrics["headline_split"] == "val" and "test" not in result.metrics["splits"]
    assert result.metrics["top1"] == result.metrics["splits"]["val"]["top1"]
    assert "val top-1" in result.summary() and "no test split" in result.summary()


def test_split_figures_are_mean_and_sample_std_with_pooled_matrices():
    seeds = [
        {"top1": 0.5, "pair_accuracy": None, "confusion_matrix": [[1, 1], [0, 2]], "videos": 4},
        {"top1": 1.0, "confusion_matrix": [[2, 0], [0, 2]], "videos": 4},
    ]
    figures = split_figures(seeds, ["a", "b"])
    assert figures["top1"] == 0.75 and figures["std"]["top1"] == pytest.approx(math.sqrt(0.125))
    assert "pair_accuracy" not in figures  # not in every seed
    assert figures["confusion_matrix"] == [[3, 1], [0, 4]] and figures["per_class_accuracy"] == {"a": 0.75, "b": 1.0}
    single = split_figures(seeds[:1], ["a", "b"])
    assert single["top1"] == 0.5 and "std" not in single


def test_seeds_train_as_one_stack_and_report_mean_and_std(split_cache, tmp_path):
    result = train_probe(split_cache, "step", tmp_path / "seeds", seed=4, seeds=3, **FAST)
    metrics = result.metrics
    assert metrics["seeds"] == [4, 5, 6] and metrics["stacked_members"] == 3
    assert [s["seed"] for s in metrics["per_seed"]] == [4, 5, 6]
    # The top level is the headline: the test figures' mean over the seeds, their std beside.
    values = [s["test"]["top1"] for s in metrics["per_seed"]]
    assert metrics["top1"] == pytest.approx(sum(values) / 3)
    assert metrics["std"]["top1"] == pytest.approx(float(torch.tensor(values, dtype=torch.float64).std()))
    val_values = [s["val"]["pair_accuracy"] for s in metrics["per_seed"]]
    assert metrics["splits"]["val"]["pair_accuracy"] == pytest.approx(sum(val_values) / 3)
    pooled = [
        [sum(s["test"]["confusion_matrix"][i][j] for s in metrics["per_seed"]) for j in range(2)] for i in range(2)
    ]
    assert metrics["confusion_matrix"] == pooled and metrics["pooled_seeds"] == [4, 5, 6]
    assert metrics["chance"]["trials"] == 3 * metrics["videos"]
    assert "±" in result.summary() and "3 seeds" in result.summary() and "test top-1" in result.summary()
    # Every seed has its own files; the run's own best.pt is the first seed's.
    run = tmp_path / "seeds"
    for seed in (4, 5, 6):
        seed_metrics = json.loads((run / "seeds" / f"seed-{seed}" / "metrics.json").read_text())
        assert seed_metrics["seeds"] == [seed] and (run / "seeds" / f"seed-{seed}" / "best.pt").is_file()
    first = load_state_dict_file(run / "seeds" / "seed-4" / "best.pt")
    own = load_state_dict_file(run / "best.pt")
    assert all(torch.equal(first[k], own[k]) for k in first)
    other = load_state_dict_file(run / "seeds" / "seed-5" / "best.pt")
    assert not torch.equal(first["frame_pos"], other["frame_pos"])  # another seed, other initial weights
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["seeds"] == 3 and record["data"]["seeds"] == [4, 5, 6]
    # A finished run is returned by --resume without training again; other seeds are refused.
    again = train_probe(split_cache, "step", run, seed=4, seeds=3, resume=True, **FAST)
    assert again.metrics == metrics and json.loads((run / "metrics.json").read_text()) == metrics
    with pytest.raises(ValueError, match="seeds"):
        train_probe(split_cache, "step", run, seed=4, seeds=2, resume=True, **FAST)


def test_first_seed_of_a_stack_is_the_run_of_that_seed_alone(split_cache, tmp_path):
    """Seeds share the first seed's batches, so member 0 is train_probe(seed=s) up to float rounding (vmapped and
    plain kernels sum in other orders). Adam moves a weight by at most about lr per step whatever the gradient's
    size, so rounding that flips a near-zero gradient's sign bounds the difference by 2 x lr x steps."""
    alone = train_probe(split_cache, "step", tmp_path / "alone", seed=2, **FAST)
    stacked = train_probe(split_cache, "step", tmp_path / "stack", seed=2, seeds=2, **FAST)
    steps = json.loads((tmp_path / "alone" / "config.json").read_text())["data"]["schedule"]["optimizer_steps"]
    a, b = (load_state_dict_file(tmp_path / name / "best.pt") for name in ("alone", "stack"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=2 * FAST["lr"] * steps) for k in a)
    # Far tighter in practice: the same predictions on every video.
    assert stacked.metrics["per_seed"][0]["test"]["top1"] == alone.metrics["top1"]


def test_cli_seeds_print_mean_and_std(split_cache, tmp_path):
    from cli.main import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(
        app,
        [
            "train-probe", str(split_cache), "--probe", "linear", "--out", str(tmp_path / "run"), "--epochs", "2",
            "--seeds", "2", "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "linear: test top-1" in result.output and "±" in result.output and "2 seeds" in result.output
    bad = CliRunner().invoke(app, ["train-probe", str(split_cache), "--lr", "inf", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "lr must be a finite number" in bad.output
    assert not (tmp_path / "x").exists()


def test_a_diverged_seed_fails_the_run_and_a_diverged_sweep_member_is_dropped(split_cache, tmp_path, monkeypatch):
    from step_cache.training.epoch_loop import NonFiniteLossError
    from step_cache.training.stacking.stacked_run import train_stacked

    with pytest.raises(NonFiniteLossError, match="lower lr="):
        train_probe(split_cache, "step", tmp_path / "run", seeds=2, **{**FAST, "lr": 1e30})
    for path in (tmp_path / "run").rglob("*.json*"):
        assert "NaN" not in path.read_text() and "Infinity" not in path.read_text(), path
    diverged, fine = train_stacked(split_cache, [make_config("step", {**FAST, "lr": lr}) for lr in (1e30, 3e-3)])
    assert diverged.metrics is None and "non-finite" in diverged.diverged and diverged.stopped_after == 0
    assert fine.diverged is None and fine.metrics["stacked_members"] == 2 and len(fine.history) == 3
    # One seed of three diverging (its initial weights non-finite) fails the run with the same clear error.
    from step_cache.training.stacking.stacked_run import StackedRun

    original = StackedRun.__init__

    def poison_second_seed(self, data, configs):
        original(self, data, configs)
        with torch.no_grad():
            next(iter(self.stack.params.values()))[1].fill_(float("nan"))

    monkeypatch.setattr(StackedRun, "__init__", poison_second_seed)
    with pytest.raises(NonFiniteLossError, match="seed 1's loss became non-finite"):
        train_probe(split_cache, "step", tmp_path / "one", seeds=3, **FAST)


def test_a_killed_multi_seed_run_resumes_exactly(split_cache, tmp_path):
    """The stack's state is committed after every epoch; a run stopped in epoch 3 resumes from epoch 2 and ends
    with the same figures and weights as an uninterrupted run."""
    whole = train_probe(split_cache, "step", tmp_path / "whole", seeds=2, **{**FAST, "epochs": 4})

    class Killed(Exception):
        pass

    def kill_in_epoch_3(record):
        if record["epoch"] == 3:
            raise Killed

    with pytest.raises(Killed):
        train_probe(split_cache, "step", tmp_path / "cut", seeds=2, on_epoch=kill_in_epoch_3, **{**FAST, "epochs": 4})
    assert not (tmp_path / "cut" / "metrics.json").exists()
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 2
    seen = []
    resumed = train_probe(
        split_cache, "step", tmp_path / "cut", seeds=2, resume=True, on_epoch=lambda r: seen.append(r["epoch"]),
        **{**FAST, "epochs": 4},
    )  # fmt: skip
    assert seen == [3, 4]  # continued after epoch 2, not started over
    timing = {"train_time_s", "train_clips_per_s", "data_wait_share", "wall_time_s", "data_mode"}
    assert {k: v for k, v in resumed.metrics.items() if k not in timing} == {
        k: v for k, v in whole.metrics.items() if k not in timing
    }
    for seed in (0, 1):
        a, b = (load_state_dict_file(tmp_path / run / "seeds" / f"seed-{seed}" / "best.pt") for run in ("whole", "cut"))
        assert all(torch.equal(a[k], b[k]) for k in a)
