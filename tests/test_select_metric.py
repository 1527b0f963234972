"""``--select-metric``: the validation metric that picks a run's best checkpoint and drives its early stop
(``records.validation_score``), for a lone run and for the members of a stack (``--seeds``, sweeps); recorded in
config.json and metrics.json; a pair-selected run needs paired validation clips."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.records import NO_SCORE, validation_score
from step_cache.training.splits import DataError
from step_cache.training.stacking.stacked_run import StackedRun
from step_cache.training.trainer import _Run, train_probe

# A recorded validation history where the metrics disagree: top-1 peaks in epoch 2, mean class accuracy in epoch 4,
# pair accuracy in epoch 3 (an imbalanced val split: the majority class carries top-1).
HISTORY = [
    {"top1": 0.50, "mean_class_accuracy": 0.40, "pair_accuracy": 0.50, "loss": 1.0},
    {"top1": 0.80, "mean_class_accuracy": 0.45, "pair_accuracy": 0.55, "loss": 0.9},
    {"top1": 0.60, "mean_class_accuracy": 0.55, "pair_accuracy": 0.90, "loss": 0.8},
    {"top1": 0.70, "mean_class_accuracy": 0.75, "pair_accuracy": 0.60, "loss": 0.7},
    {"top1": 0.55, "mean_class_accuracy": 0.50, "pair_accuracy": 0.60, "loss": 0.6},
]
BEST_EPOCH = {"top1": 2, "mean-class": 4, "pair": 3}
SETTINGS = {"epochs": len(HISTORY), "batch_size": 8, "progress": False}


def best_epoch(history: list[dict], select_metric: str) -> int:
    """The 1-based epoch the rule picks: the first epoch whose score no later epoch beats (as the runs keep it)."""
    best, epoch = NO_SCORE, 0
    for index, val in enumerate(history, start=1):
        if validation_score(val, select_metric) > best:
            best, epoch = validation_score(val, select_metric), index
    return epoch


@pytest.mark.parametrize("select_metric", list(BEST_EPOCH))
def test_the_rule_ranks_epochs_by_the_selected_metric(select_metric):
    assert best_epoch(HISTORY, select_metric) == BEST_EPOCH[select_metric]


def test_ties_go_to_the_lower_validation_loss():
    tied = [{**HISTORY[3], "loss": 0.9}, {**HISTORY[3], "loss": 0.5}, {**HISTORY[3], "loss": 0.7}]
    assert best_epoch(tied, "mean-class") == 2


def test_an_unknown_metric_is_refused_naming_the_choices():
    with pytest.raises(TrainConfigError, match=r"select_metric must be one of top1, mean-class, pair, got 'f1'"):
        make_config("linear", {"select_metric": "f1"})
    assert make_config("linear", {}).select_metric == "top1"  # today's rule stays the default


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("select-metric-tokens")
    write_token_cache(directory, videos_per_class=8, dim=16, val_every=4)
    return directory


def replay(monkeypatch, cls):
    """Make ``cls.evaluate`` (a lone run's or a stack's) report ``HISTORY``'s figures for the per-epoch
    validation, epoch after epoch, with everything else (loss, final metrics) computed for real."""
    original, calls = cls.evaluate, []

    def evaluate(self, indices, orders, *args, **kwargs):
        result = original(self, indices, orders, *args, **kwargs)
        if orders:  # the final metrics of the best checkpoint: as computed
            return result
        recorded = {key: value for key, value in HISTORY[len(calls)].items() if key != "loss"}
        calls.append(indices)
        return [{**r, **recorded} for r in result] if isinstance(result, list) else {**result, **recorded}

    monkeypatch.setattr(cls, "evaluate", evaluate)


@pytest.mark.parametrize("select_metric", ["top1", "mean-class"])
def test_a_run_keeps_the_checkpoint_of_the_selected_metric(cache, tmp_path, monkeypatch, select_metric):
    replay(monkeypatch, _Run)
    out = tmp_path / "run"
    result = train_probe(cache, "linear", out, select_metric=select_metric, **SETTINGS)
    expected = BEST_EPOCH[select_metric]
    assert result.metrics["best_epoch"] == expected and result.metrics["select_metric"] == select_metric
    assert json.loads((out / "config.json").read_text())["config"]["select_metric"] == select_metric
    flags = [record["best"] for record in result.history]
    assert flags[expected - 1] and not any(flags[expected:])  # metrics.jsonl marks that epoch the last best
    # best.pt holds that epoch's weights: its validation loss (not replayed) is the one that epoch recorded.
    assert result.metrics["loss"] == pytest.approx(result.history[expected - 1]["val_loss"], rel=1e-6)


def test_every_seed_of_a_stack_keeps_the_checkpoint_of_the_selected_metric(cache, tmp_path, monkeypatch):
    replay(monkeypatch, StackedRun)
    out = tmp_path / "seeds"
    result = train_probe(cache, "linear", out, seeds=2, select_metric="mean-class", **SETTINGS)
    assert result.metrics["select_metric"] == "mean-class"
    for seed in (0, 1):
        metrics = json.loads((out / "seeds" / f"seed-{seed}" / "metrics.json").read_text())
        assert metrics["best_epoch"] == BEST_EPOCH["mean-class"] and metrics["select_metric"] == "mean-class"


def test_the_cli_records_the_choice_and_names_it_in_the_result_line(cache, tmp_path):
    from cli.main import _register_commands, app

    _register_commands()
    out = tmp_path / "cli"
    command = ["train-probe", str(cache), "--probe", "linear", "--out", str(out), "--epochs", "2", "--batch-size", "8"]
    result = CliRunner().invoke(app, [*command, "--select-metric", "mean-class", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "checkpoint chosen on val mean class accuracy" in result.output
    assert json.loads((out / "metrics.json").read_text())["select_metric"] == "mean-class"
    refused = CliRunner().invoke(app, [*command, "--select-metric", "recall"])
    assert refused.exit_code != 0 and "select_metric must be one of top1, mean-class, pair" in refused.output
    assert (out / "metrics.json").is_file()  # refused before the run directory was looked at


def test_pair_selection_needs_paired_validation_clips(tmp_path):
    unpaired = tmp_path / "level"
    write_token_cache(unpaired, videos_per_class=4, dim=16, task="level")
    with pytest.raises(DataError, match=r"select_metric='pair' needs mirrored class pairs: the cache names none"):
        train_probe(unpaired, "linear", tmp_path / "run", select_metric="pair", **SETTINGS)
    assert not (tmp_path / "run" / "metrics.json").exists()
