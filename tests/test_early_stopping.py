"""Early stopping (training/early_stopping.py): the rule's arithmetic, a real run that stops with the right
record, --no-early-stop running the full schedule, --seeds and sweep members stopping on their own, and resume of
a stopped or mid-patience run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_sweeps import LOSS_RTOL, assert_same_as_lone_run  # the stacked-vs-lone tolerances, derived there
from typer.testing import CliRunner

from step_cache.cache.shards import open_shards
from step_cache.checkpoints import load_state_dict_file
from step_cache.sweeps.results import retrain_best
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training import run_commits, runs
from step_cache.training.config import LOCAL_FIELDS, TrainConfigError, make_config, with_schedule
from step_cache.training.early_stopping import auto_patience, early_stop_record, is_finished, should_stop
from step_cache.training.run_record import with_config_defaults
from step_cache.training.stacking import train_stacked
from step_cache.training.trainer import train_probe

# On this cache (4 val videos) these settings stop every run long before epoch 30, seeds 0-2 at different epochs.
STOPPING = {"epochs": 30, "batch_size": 8, "patience": 3, "progress": False}
TIMING = {"train_s", "data_wait_s", "clips_per_s", "eval_s"}
FINAL_TIMING = {"train_time_s", "train_clips_per_s", "data_wait_share", "wall_time_s"}


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The order task with a val and a test split (every 4th video val, every 5th test)."""
    directory = tmp_path_factory.mktemp("early-stop-tokens")
    write_token_cache(directory, videos_per_class=10, dim=16, val_every=4, test_every=5)
    return directory


def resolved(**options):
    return with_schedule(make_config("linear", {"progress": False, **options}), train_clips=100)


def stops_by_the_rule(history: list[dict], patience: int, warmup: int = 1) -> None:
    """The last epoch of ``history`` is the first at which ``patience`` epochs passed without a new best."""
    best = max(r["epoch"] for r in history if r["best"])
    assert history[-1]["epoch"] == max(best, warmup) + patience
    assert not any(r["best"] for r in history[best:])


def without(record: dict, keys: set) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


# --- the rule ---------------------------------------------------------------------------------------------------


def test_patience_scales_with_the_schedule_and_has_a_floor():
    assert [auto_patience(e) for e in (1, 30, 33, 34, 100, 167, 1000)] == [10, 10, 10, 11, 30, 51, 300]
    assert resolved(epochs=100).patience == 30  # resolved with the schedule, so config.json records it
    assert resolved(epochs=100, patience=7).patience == 7
    assert resolved(epochs=100, early_stop=False).patience is None


def test_patience_counts_only_epochs_after_the_best_and_after_the_warm_up():
    config = resolved(epochs=20, patience=2, warmup_epochs=2.5)  # warm-up ends with epoch 3
    # Best in epoch 1, inside the warm-up: the count starts at epoch 3, so the stop comes after epoch 5, not 3.
    assert [should_stop(config, done, best_epoch=1) for done in (3, 4, 5)] == [False, False, True]
    assert [should_stop(config, done, best_epoch=0) for done in (4, 5)] == [False, True]  # never improved
    assert [should_stop(config, done, best_epoch=6) for done in (7, 8)] == [False, True]
    assert not should_stop(config, 20, best_epoch=1)  # the last planned epoch: complete, not stopped
    assert is_finished(config, 20, 1) and is_finished(config, 8, 6) and not is_finished(config, 7, 6)
    assert not should_stop(resolved(epochs=20, early_stop=False), 19, best_epoch=1)
    assert not should_stop(resolved(epochs=20, warmup_epochs=0.0), 10, best_epoch=1)  # default patience 10
    assert should_stop(resolved(epochs=20, warmup_epochs=0.0), 11, best_epoch=1)
    assert early_stop_record(config, 8, 6) == {
        "stopped": True, "epoch": 8, "best_epoch": 6, "planned_epochs": 20, "patience": 2, "warmup_epochs": 3,
    }  # fmt: skip


def test_bad_settings_and_runs_from_before_early_stopping():
    with pytest.raises(TrainConfigError, match="patience must be >= 1, got 0"):
        make_config("step", {"patience": 0})
    with pytest.raises(TrainConfigError, match="patience goes with early stopping: drop --no-early-stop"):
        make_config("step", {"patience": 5, "early_stop": False})
    # A run recorded before early stopping existed ran every epoch: its record reads as early_stop False.
    assert with_config_defaults({"lr": 1e-3})["early_stop"] is False
    assert with_config_defaults({"lr": 1e-3, "early_stop": True})["early_stop"] is True


# --- one run ----------------------------------------------------------------------------------------------------


def test_cli_run_stops_early_with_its_record_and_no_early_stop_runs_the_full_schedule(cache, tmp_path):
    from cli.main import _register_commands, app

    _register_commands()

    def train(out, *flags):
        result = CliRunner().invoke(app, [
            "train-probe", str(cache), "--probe", "linear", "--out", str(tmp_path / out), "--epochs", "30",
            "--batch-size", "8", "--quiet", *flags,
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        run = tmp_path / out
        return (json.loads((run / name).read_text()) for name in ("metrics.json", "config.json")), runs.read_epoch_log(
            run
        )

    (metrics, record), history = train("early", "--patience", "3")
    stop = metrics["early_stop"]
    assert stop["stopped"] and stop["planned_epochs"] == 30 and stop["patience"] == 3 and stop["epoch"] < 30
    assert stop["epoch"] == len(history) and stop["best_epoch"] == metrics["best_epoch"]
    stops_by_the_rule(history, patience=3)
    assert record["config"]["early_stop"] is True and record["config"]["patience"] == 3
    assert record["data"]["schedule"]["epochs"] == 30  # the planned schedule (and its cosine) is unchanged

    (full, full_record), full_history = train("full", "--no-early-stop")
    assert len(full_history) == 30 and full["early_stop"] == {
        "stopped": False, "epoch": 30, "best_epoch": full["best_epoch"], "planned_epochs": 30, "patience": None,
        "warmup_epochs": 1,
    }  # fmt: skip
    assert full_record["config"]["early_stop"] is False and full_record["config"]["patience"] is None
    # The stopped run is the full run's first epochs, figure for figure.
    assert [without(r, TIMING) for r in history] == [without(r, TIMING) for r in full_history[: len(history)]]

    (default, default_record), _ = train("default")
    assert default_record["config"]["patience"] == 10 and default["early_stop"]["patience"] == 10


def test_resume_of_a_stopped_run_returns_it_and_a_mid_patience_run_stops_where_it_would_have(cache, tmp_path):
    options = {**STOPPING, "lr": 1e-2}
    straight = train_probe(cache, "linear", tmp_path / "straight", **options)
    stop = straight.metrics["early_stop"]
    assert stop["stopped"] and stop["epoch"] - stop["best_epoch"] == 3

    def kill_mid_patience(record):
        if record["epoch"] == stop["epoch"] - 1:  # one epoch short of the stop
            raise Killed

    with pytest.raises(Killed):
        train_probe(cache, "linear", tmp_path / "run", on_epoch=kill_mid_patience, **options)
    with pytest.raises(runs.RunError, match="patience: 3 in the run, 4 now"):  # resume keeps the rule
        train_probe(cache, "linear", tmp_path / "run", resume=True, **{**options, "patience": 4})
    seen = []
    resumed = train_probe(cache, "linear", tmp_path / "run", resume=True, on_epoch=seen.append, **options)
    assert [r["epoch"] for r in seen] == [stop["epoch"]]  # the one epoch left, then the stop
    assert without(resumed.metrics, FINAL_TIMING) == without(straight.metrics, FINAL_TIMING)
    assert (tmp_path / "run" / "best.pt").read_bytes() == (tmp_path / "straight" / "best.pt").read_bytes()
    # A stopped run is finished: resuming it trains nothing and returns the same figures.
    seen.clear()
    again = train_probe(cache, "linear", tmp_path / "run", resume=True, on_epoch=seen.append, **options)
    assert seen == [] and again.metrics == resumed.metrics
    # A kill after the stopping epoch's commit but before metrics.json: resume trains nothing more either.
    (tmp_path / "run" / "metrics.json").unlink()
    again = train_probe(cache, "linear", tmp_path / "run", resume=True, on_epoch=seen.append, **options)
    assert seen == [] and without(again.metrics, FINAL_TIMING) == without(straight.metrics, FINAL_TIMING)


# --- stacks: --seeds and sweeps ---------------------------------------------------------------------------------


def test_seeds_stop_at_their_own_epochs_like_the_same_seeds_run_in_full(cache, tmp_path):
    options = {**STOPPING, "lr": 3e-3}
    early = train_probe(cache, "step", tmp_path / "early", seeds=3, **options)
    train_probe(cache, "step", tmp_path / "full", seeds=3, early_stop=False, **without(options, {"patience"}))
    stops = [s["early_stop"]["epoch"] for s in early.metrics["per_seed"]]
    assert len(set(stops)) > 1 and max(stops) < 30  # each seed on its own
    for seed, summary in zip((0, 1, 2), early.metrics["per_seed"], strict=True):
        history = runs.read_epoch_log(tmp_path / "early" / "seeds" / f"seed-{seed}")
        full_history = runs.read_epoch_log(tmp_path / "full" / "seeds" / f"seed-{seed}")
        stops_by_the_rule(history, patience=3)
        assert summary["early_stop"]["epoch"] == len(history) and summary["best_epoch"] == history[-1]["epoch"] - 3
        # A member leaving the stack changes nothing for the others: each seed's run is its full run's first epochs
        # (losses to the rounding of a smaller vmapped stack: test_sweeps.LOSS_RTOL).
        losses = {"train_loss", "val_loss"}
        for mine, theirs in zip(history, full_history, strict=False):
            assert without(mine, TIMING | losses) == without(theirs, TIMING | losses)
            for key in losses:
                assert mine[key] == pytest.approx(theirs[key], rel=LOSS_RTOL, abs=0), key
    # The first seed is the run of that seed alone (test_trustworthy_figures: Adam moves a weight by at most about
    # lr per step, so rounding bounds the difference by 2 x lr x steps).
    alone = train_probe(cache, "step", tmp_path / "alone", **options)
    assert alone.metrics["early_stop"] == early.metrics["per_seed"][0]["early_stop"]
    a, b = (load_state_dict_file(tmp_path / name / "best.pt") for name in ("alone", "early"))
    schedule = json.loads((tmp_path / "alone" / "config.json").read_text())["data"]["schedule"]
    steps = alone.metrics["early_stop"]["epoch"] * schedule["optimizer_steps"] // schedule["epochs"]
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=2 * options["lr"] * steps) for k in a)
    first = early.metrics["per_seed"][0]["test"]
    assert first == {key: alone.metrics["per_seed"][0]["test"][key] for key in first}


def test_sweep_members_stop_on_their_own_and_match_the_same_config_trained_alone(cache, tmp_path):
    configs = [make_config("step", {**STOPPING, "lr": lr}) for lr in (3e-3, 1e-2, 3e-4)]
    results = train_stacked(cache, configs, keep_weights=True)
    assert len({r.stopped_after for r in results}) > 1
    for config, result in zip(configs, results, strict=True):
        assert result.metrics is not None  # stopped early is complete, not pruned
        assert result.stopped_after == result.metrics["early_stop"]["epoch"] == len(result.history)
        lone = train_probe(cache, "step", tmp_path / str(config.lr), **STOPPING, lr=config.lr)
        assert_same_as_lone_run(result, lone)
        assert result.metrics["early_stop"] == lone.metrics["early_stop"]


def test_seeds_resume_after_a_seed_stopped_continues_the_others_exactly(cache, tmp_path, monkeypatch):
    options = {**STOPPING, "lr": 3e-3, "seeds": 3}
    straight = train_probe(cache, "step", tmp_path / "straight", **options)
    stops = sorted(s["early_stop"]["epoch"] for s in straight.metrics["per_seed"])
    kill_after = stops[0]  # the first seed(s) stopped, the others go on
    assert kill_after < stops[-1]
    monkeypatch.setattr(run_commits, "COMMIT_EVERY_S", 0.0)  # commit every epoch, so the kill lands after kill_after
    real_log = runs.write_epoch_log

    def log_or_die(run_dir, records):
        real_log(run_dir, records)
        if run_dir == tmp_path / "run" and runs.load_state(run_dir / runs.STATE)["epoch"] == kill_after:
            raise Killed

    monkeypatch.setattr(runs, "write_epoch_log", log_or_die)
    with pytest.raises(Killed):
        train_probe(cache, "step", tmp_path / "run", **options)
    monkeypatch.setattr(runs, "write_epoch_log", real_log)
    assert len(runs.load_state(tmp_path / "run" / runs.STATE)["active"]) < 3
    resumed = train_probe(cache, "step", tmp_path / "run", resume=True, **options)
    assert resumed.metrics["per_seed"] == straight.metrics["per_seed"]
    assert resumed.metrics["splits"] == straight.metrics["splits"]
    for seed in (0, 1, 2):
        path = f"seeds/seed-{seed}/best.pt"
        assert (tmp_path / "run" / path).read_bytes() == (tmp_path / "straight" / path).read_bytes()


def test_cli_sweep_trials_stop_early_complete_and_the_retrain_stops_where_its_trial_did(cache, tmp_path):
    from cli.main import _register_commands, app

    _register_commands()
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, [
        "sweep", str(cache), "--probe", "linear", "--out", str(out), "--trials", "2", "--parallel", "2",
        "--param", "lr=0.01,0.003", "--grid", "--pruner", "none", "--epochs", "30", "--batch-size", "8",
        "--patience", "3", "--no-plots", "--quiet",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "trials.json").read_text())["trials"]
    assert [row["state"] for row in rows] == ["COMPLETE", "COMPLETE"]  # stopped early is complete, not pruned
    assert all(row["epochs_run"] < 30 for row in rows)
    best = json.loads((out / "best.json").read_text())
    assert best["config"]["early_stop"] is True and best["config"]["patience"] == 3
    retrained = json.loads((out / "best-run" / "metrics.json").read_text())
    assert retrained["early_stop"]["stopped"] and retrained["early_stop"]["epoch"] == rows[0]["epochs_run"]
    assert retrained["splits"]["val"]["top1"] == best["value"]  # the trial's objective is on val


def test_the_best_trial_of_a_study_from_before_early_stopping_is_retrained_in_full(cache, tmp_path):
    trial = dataclasses.asdict(make_config("linear", {**STOPPING, "patience": None, "lr": 1e-2}))
    for name in ("early_stop", "patience"):  # what such a study stored
        del trial[name]
    here = make_config("linear", {"early_stop": False, "progress": False})
    assert set(LOCAL_FIELDS) <= set(trial)
    result = retrain_best(tmp_path, open_shards(cache), {"config": trial}, here)
    assert result.metrics["early_stop"]["stopped"] is False and len(result.history) == 30


def test_resuming_a_run_trained_without_early_stopping_names_the_option(cache, tmp_path):
    train_probe(cache, "linear", tmp_path / "run", epochs=2, early_stop=False, progress=False)
    # The same command without --no-early-stop (what a run from before early stopping looks like now):
    with pytest.raises(runs.RunError, match="trained without early stopping: add early_stop=False"):
        train_probe(cache, "linear", tmp_path / "run", epochs=2, resume=True, progress=False)
