"""Stacked training (a member of a batch = the same config trained alone), the stacked AdamW, grouping, early
stopping, search-space parsing, and the Optuna-driven sweep (results, grid, pruning, shared storage)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import textwrap

import optuna
import pytest
import torch
from stacked_optimizers import step_stack_and_lone

from step_cache.cache.shards import open_shards
from step_cache.checkpoints import load_state_dict_file
from step_cache.probes import ProbeConfigError
from step_cache.sweeps.results import retrain_best, trial_line
from step_cache.sweeps.space import SweepSpaceError, build_space
from step_cache.sweeps.storage import has_outcome
from step_cache.sweeps.study import SweepError, run_batch, run_sweep, trial_config
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import make_config
from step_cache.training.optimization import WarmupCosine
from step_cache.training.schedule import schedule_steps
from step_cache.training.stacking import group_by_shape, train_stacked
from step_cache.training.stacking.adamw import StackedAdamW
from step_cache.training.stacking.stacked_run import StackedRun
from step_cache.training.trainer import train_probe

BASE = {"epochs": 5, "batch_size": 8, "progress": False}
TIMING = {"train_s", "data_wait_s", "clips_per_s", "eval_s"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A learnable task: 3 classes x 10 videos (every 5th is val), 4 frames of 1 + 2x2 tokens, D=16; class_0 and
    class_1 declared a mirrored pair (pairs.txt) so the pair metrics are exercised."""
    directory = tmp_path_factory.mktemp("sweep-tokens") / "shards"
    write_token_cache(directory, task="static", num_classes=3, videos_per_class=10, dim=16, val_every=5)
    (directory.parent / "pairs.txt").write_text("class_0,class_1\n")
    return directory


def pairs(cache) -> str:
    return str(cache.parent / "pairs.txt")


# --- the stacked AdamW ------------------------------------------------------------------------------------------


def test_stacked_adamw_steps_each_member_exactly_like_torch_adamw():
    """Same gradients in, same weights out, bit for bit: per-member lr, weight decay (not on norms, biases,
    tokens), warm-up + cosine, and gradient clipping (active, inactive and off)."""
    settings = [(3e-3, 0.05, 2, 1.0), (1e-3, 0.0, 0, 0.0), (7e-3, 0.1, 3, 0.05)]  # lr, wd, warm-up steps, clip
    stack, lone = step_stack_and_lone(StackedAdamW, "adamw", settings)
    for k, model in enumerate(lone):
        for name, p in model.named_parameters():
            assert torch.equal(stack.params[name][k], p), (k, name)
    assert not torch.equal(stack.params["head.weight"][0], stack.params["head.weight"][2])


# --- a member trained in a stack = the same config trained alone -------------------------------------------------


# What "a member = its lone run" can promise in float32. The stack and the lone run compute the same sums in another
# order (vmapped vs plain kernels, and again per CPU: scalar, AVX2 and AVX-512 kernels split sums differently), so
# their gradients differ by rounding. Exactly equal stays what is computed from predictions (accuracies, confusion
# matrices, the best epoch: a prediction would flip only if a logit margin were within rounding) or not from the
# weights at all (counts, shapes, learning rates). Floats computed from the weights are compared with the bounds below.
EXACT_FINAL = ("top1", "top5", "mean_class_accuracy", "pair_accuracy", "reversed_top1", "shuffled_top1",
               "reversed_pair_accuracy", "shuffled_pair_accuracy", "best_epoch", "per_class_accuracy",
               "confusion_matrix", "parameters", "parameters_without_head", "videos", "clips")  # fmt: skip
LOSSES = ("train_loss", "val_loss", "loss")
# Losses: no a-priori bound is tighter than the weights' below (AdamW amplifies rounding data-dependently). Measured
# between stack and lone on CPU kernel families torch and MKL dispatch to (ATEN_CPU_CAPABILITY=default / avx2 /
# avx512 combined with MKL_CBWR=COMPATIBLE / AVX / AVX2 / AVX512): at most 1.0e-5 relative. 1e-4 leaves 10x, and a
# member bug still moves a loss further (measured on these configs: weight decay off 1.4e-3, lr +10 % 3e-2, label
# smoothing or warm-up ignored > 1e-3, weight decay +10 % 1.4e-4).
LOSS_RTOL = 1e-4


def adamw_drift(config, train_clips: int, epochs: int) -> float:
    """How far one weight of two AdamW runs of ``config`` can drift apart in ``epochs`` epochs when their gradients
    differ only by rounding. An AdamW step moves a weight by lr_t · m̂/(√v̂ + eps): about lr_t whatever the gradient's
    size, also when the gradient is rounding noise around 0 (e.g. the attention key bias, whose true gradient is 0:
    softmax cancels it), and the noise may point the two runs opposite ways. So at most 2 · Σ lr_t."""
    total, warmup = schedule_steps(config.epochs, train_clips, config.batch_size, config.warmup_epochs)
    schedule = WarmupCosine(total, warmup)
    steps = epochs * math.ceil(train_clips / config.batch_size)
    return 2 * sum(config.lr * schedule(step) for step in range(steps))


def assert_same_as_lone_run(member, lone):
    assert len(member.history) == len(lone.history)
    for mine, theirs in zip(member.history, lone.history, strict=True):
        assert set(mine) == set(theirs)
        for key in set(mine) - TIMING:
            if key in LOSSES:
                assert mine[key] == pytest.approx(theirs[key], rel=LOSS_RTOL, abs=0), key
            else:
                assert mine[key] == theirs[key], key
    lone_val = lone.metrics["per_seed"][0]["val"]  # a member's metrics keep val at the top level, as trials select
    for key in EXACT_FINAL:
        assert member.metrics[key] == (lone_val[key] if key in lone_val else lone.metrics[key]), key
    assert member.metrics["loss"] == pytest.approx(lone_val["loss"], rel=LOSS_RTOL, abs=0)
    best = load_state_dict_file(lone.run_dir / "best.pt")
    assert set(best) == set(member.weights)
    assert all(member.weights[key].shape == value.shape for key, value in best.items())
    train_clips = json.loads((lone.run_dir / "config.json").read_text())["data"]["splits"]["train"]
    drift = adamw_drift(member.config, train_clips, lone.metrics["best_epoch"])
    for key, value in best.items():
        torch.testing.assert_close(member.weights[key], value, rtol=0, atol=drift, msg=key)


@pytest.mark.parametrize(("probe", "options"), [("step", {}), ("self-attentive", {"depth": 2, "num_heads": 2})])
def test_member_of_a_stack_matches_the_same_config_trained_alone(cache, tmp_path, probe, options):
    """Dropout 0: vmap draws all members' dropout masks from one random stream, which a lone run cannot
    reproduce, so exact agreement is only defined without dropout (dropout is tested separately below)."""
    members = [
        {"lr": 1e-2, "weight_decay": 0.05},
        {"lr": 3e-3, "weight_decay": 0.0, "warmup_epochs": 0.5, "clip_grad": 0.05},
        {"lr": 2e-2, "weight_decay": 0.1, "label_smoothing": 0.1, "clip_grad": 0.0, "warmup_epochs": 2},
    ]
    common = {**BASE, "pairs": pairs(cache), "probe_options": options}
    configs = [make_config(probe, {**common, **m}) for m in members]
    results = train_stacked(cache, configs, keep_weights=True)
    assert [r.metrics["stacked_members"] for r in results] == [3, 3, 3]
    assert len({r.metrics["top1"] for r in results} | {r.history[0]["train_loss"] for r in results}) > 2
    for index, member in enumerate(members):
        lone = train_probe(cache, probe, tmp_path / str(index), **common, **member)
        assert_same_as_lone_run(results[index], lone)
    assert results[0].metrics["top1"] >= 0.8  # it learned: the comparison is not between untrained probes


def test_members_with_dropout_drop_differently_learn_and_leave_others_exact(cache, tmp_path):
    configs = [make_config("step", {**BASE, "lr": 1e-2, "probe_options": {"dropout": rate}}) for rate in (0, 0.3, 0.3)]
    results = train_stacked(cache, configs, keep_weights=True)
    zero, first, second = results
    # Same init, lr and batches: only the dropout masks differ between the two dropout members.
    assert first.history[0]["train_loss"] != second.history[0]["train_loss"]
    assert not torch.equal(first.weights["head.weight"], second.weights["head.weight"])
    assert first.history[-1]["train_loss"] < first.history[0]["train_loss"]
    assert first.metrics["top1"] >= 0.8 and second.metrics["top1"] >= 0.8
    # A dropout-0 member keeps every unit whatever the stream: it still equals its lone run.
    lone = train_probe(cache, "step", tmp_path / "zero", **BASE, lr=1e-2, probe_options={"dropout": 0.0})
    assert_same_as_lone_run(zero, lone)


def test_configs_are_grouped_by_shape_and_results_come_back_in_order(cache):
    configs = [
        make_config("step", {**BASE, "epochs": 2, "lr": 1e-2}),
        make_config("step", {**BASE, "epochs": 2, "probe_options": {"depth": 2}}),
        make_config("step", {**BASE, "epochs": 2, "lr": 3e-3, "probe_options": {"dropout": 0.1}}),
        make_config("step", {**BASE, "epochs": 2, "batch_size": 4}),  # other batches: its own stack
    ]
    assert group_by_shape(configs) == [[0, 2], [1], [3]]
    results = train_stacked(cache, configs, keep_weights=True)
    assert [r.metrics["stacked_members"] for r in results] == [2, 1, 2, 1]
    assert "blocks.1.attn.qkv.weight" in results[1].weights and "blocks.1.attn.qkv.weight" not in results[0].weights
    assert results[2].config.probe_options["dropout"] == 0.1 and results[2].config.lr == 3e-3
    with pytest.raises(ValueError, match="different shapes"):
        StackedRun(None, configs[:2])


def test_a_stopped_member_is_dropped_and_the_others_carry_on_unchanged(cache, tmp_path):
    configs = [make_config("step", {**BASE, "lr": lr}) for lr in (1e-2, 1e-5, 3e-3)]
    calls = []

    def on_epoch(index, record):
        calls.append((index, record["epoch"]))
        return index == 1 and record["epoch"] == 2

    results = train_stacked(cache, configs, on_epoch=on_epoch, keep_weights=True)
    assert results[1].metrics is None and results[1].weights is None and results[1].stopped_after == 2
    assert [r["epoch"] for r in results[1].history] == [1, 2]
    assert calls.count((1, 3)) == 0 and calls.count((0, 5)) == 1 and calls.count((2, 5)) == 1
    for index in (0, 2):
        lone = train_probe(cache, "step", tmp_path / str(index), **BASE, lr=configs[index].lr)
        assert_same_as_lone_run(results[index], lone)


# --- search space -----------------------------------------------------------------------------------------------


def test_space_from_flags():
    space = build_space("step", ["lr=log:1e-4..3e-3", "wd=0.0,0.05,0.1", "dropout=0..0.3", "depth=1,2",
                                 "heads=1..4", "mlp=true,false", "ls=0.1", "warmup=0..2:0.5"])  # fmt: skip
    d = space.distributions
    assert isinstance(d["lr"], optuna.distributions.FloatDistribution) and d["lr"].log
    assert (d["lr"].low, d["lr"].high) == (1e-4, 3e-3)
    assert d["weight_decay"].choices == (0.0, 0.05, 0.1)
    assert (d["dropout"].low, d["dropout"].high, d["dropout"].log) == (0.0, 0.3, False)
    assert d["depth"].choices == (1, 2) and isinstance(d["num_heads"], optuna.distributions.IntDistribution)
    assert d["mlp"].choices == (True, False) and d["warmup_epochs"].step == 0.5
    assert space.fixed == {"label_smoothing": 0.1}
    config = trial_config("step", {"epochs": 3}, {"lr": 1e-3, "depth": 2, "dropout": 0.1, "label_smoothing": 0.1})
    assert config.lr == 1e-3 and config.probe_options == {"depth": 2, "dropout": 0.1} and config.epochs == 3


def test_space_from_toml_and_yaml_files_and_flags_override(tmp_path):
    toml = tmp_path / "space.toml"
    toml.write_text('[params]\nlr = "log:1e-4..3e-3"\nwd = [0.0, 0.1]\ndropout = { low = 0.0, high = 0.3 }\n'
                    'depth = { choices = [1, 2] }\nlabel_smoothing = 0.1\n')  # fmt: skip
    yaml = tmp_path / "space.yaml"
    yaml.write_text("lr: log:1e-4..3e-3\nwd: [0.0, 0.1]\ndropout: {low: 0.0, high: 0.3}\ndepth: {choices: [1, 2]}\n"
                    "label_smoothing: 0.1\n")  # fmt: skip
    from_toml, from_yaml = build_space("step", space_file=toml), build_space("step", space_file=yaml)
    assert from_toml == from_yaml
    assert from_toml.distributions["weight_decay"].choices == (0.0, 0.1) and from_toml.fixed == {"label_smoothing": 0.1}
    overridden = build_space("step", ["wd=0.05", "depth=1,2,3"], toml)
    assert "weight_decay" not in overridden.distributions and overridden.fixed["weight_decay"] == 0.05
    assert overridden.distributions["depth"].choices == (1, 2, 3)


@pytest.mark.parametrize(
    ("probe", "flags", "message"),
    [
        ("step", ["learning_rate=1e-3..1e-2"], r"unknown parameter 'learning_rate' for probe 'step'; searchable: .*lr"),
        ("attentive", ["frame_pos=true,false"], "unknown parameter 'frame_pos' for probe 'attentive'"),
        ("step", ["lr=log:1e-4-3e-3"], r"a log range is written log:LOW\.\.HIGH"),
        ("step", ["dropout=0..0.3.."], r"bad range; write LOW\.\.HIGH"),
        ("step", ["lr=3e-3..1e-4"], "LOW must be below HIGH"),
        ("step", ["lr=log:0..1e-2"], "a log range needs LOW > 0"),
        ("step", ["depth=1.5,2"], "depth takes whole numbers"),
        ("step", ["mlp=0..1"], "mlp is not numeric"),
        ("step", ["mlp=maybe,true"], "mlp takes true or false"),
        ("step", ["lr"], "expected NAME=SPEC"),
        ("step", ["wd=0,,0.1"], "no empty items"),
        ("step", ["tokens=all,some"], "tokens takes auto, all, cls, patches"),
    ],
)
def test_bad_space_flags_give_clear_errors(probe, flags, message):
    with pytest.raises(SweepSpaceError, match=message):
        build_space(probe, flags)


def test_unknown_probe_empty_space_and_grid_of_ranges(tmp_path):
    with pytest.raises(ProbeConfigError, match="unknown probe 'mean'"):
        build_space("mean", ["lr=1e-3..1e-2"])
    empty = (
        r"empty search space \(only fixed values: lr\): give at least one flags entry 'NAME=SPEC' with a range or "
        r"several values, e.g. flags=\['lr=log:1e-4..3e-3'\], or a space_file"
    )
    with pytest.raises(SweepSpaceError, match=empty):
        build_space("step", ["lr=1e-3"]).check_not_empty()
    with pytest.raises(SweepSpaceError, match="sampler='grid' needs a list of values for every parameter; lr is a"):
        build_space("step", ["lr=1e-3..1e-2", "wd=0,0.1"]).grid()
    bad = tmp_path / "bad.toml"
    bad.write_text("[params\nlr = 1")
    with pytest.raises(SweepSpaceError, match=r"bad\.toml: cannot parse"):
        build_space("step", space_file=bad)
    with pytest.raises(SweepSpaceError, match="does not exist"):
        build_space("step", space_file=tmp_path / "missing.toml")


# --- the Optuna sweep -------------------------------------------------------------------------------------------


def test_sweep_writes_sorted_trials_best_config_best_run_and_plots(cache, tmp_path):
    space = build_space("step", ["lr=log:1e-4..3e-2", "wd=0,0.1", "depth=1,2"])
    result = run_sweep(cache, "step", tmp_path / "s", space=space, trials=6, parallel=3, pruner="none",
                       **{**BASE, "epochs": 3, "pairs": pairs(cache)})  # fmt: skip
    out = tmp_path / "s"
    content = json.loads((out / "trials.json").read_text())
    rows = content["trials"]
    assert content["metric"] == "top1" and content["space"]["lr"]["log"] is True
    assert [r["state"] for r in rows] == ["COMPLETE"] * 6 and sorted(r["number"] for r in rows) == list(range(6))
    values = [r["value"] for r in rows]
    assert values == sorted(values, reverse=True) and [r["rank"] for r in rows] == list(range(1, 7))
    assert all(r["value"] == r["metrics"]["top1"] and r["epochs_run"] == 3 for r in rows)
    assert {"reversed_top1", "shuffled_top1", "pair_accuracy"} <= set(rows[0]["metrics"])
    csv_lines = (out / "trials.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,number,state,value,lr,weight_decay,depth,") and len(csv_lines) == 7
    best = json.loads((out / "best.json").read_text())
    assert best["number"] == rows[0]["number"] and best["params"] == rows[0]["params"]
    assert best["config"]["lr"] == best["params"]["lr"]
    assert best["config"]["probe_options"]["depth"] == best["params"]["depth"]
    # The best configuration retrained alone (no dropout) reproduces the trial: same metric, normal run dir. Top-1
    # counts equal predictions, which a stack member and its lone run share (see assert_same_as_lone_run): exact.
    run = out / "best-run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.json", "metrics.jsonl", "best.pt", "last.pt"}
    assert json.loads((run / "metrics.json").read_text())["splits"]["val"]["top1"] == best["value"]
    assert best["best_run"]["val_top1"] == best["value"]
    sweep = json.loads((run / "config.json").read_text())["sweep"]  # the retrained run carries its sweep's name
    assert sweep == {"name": "s", "out": str(out), "trial": best["number"], "params": best["params"]}
    line = trial_line(rows[0], "top1")  # the objective named once, with its split
    assert line.startswith(f"  #{rows[0]['number']:<4} val top-1 {100 * rows[0]['value']:.1f}% | pair ")
    assert "top1" not in line and line.count("top-1") == 1
    names = sorted(p.name for p in result.figures)
    assert names == ["objective_vs_depth.png", "objective_vs_lr.png", "objective_vs_weight_decay.png",
                     "parallel_coordinates.png"]  # fmt: skip
    assert all(p.parent == out / "plots" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.figures)


def test_retraining_the_best_trial_uses_this_machines_execution_settings(cache, tmp_path):
    """A trial stored by another worker of a shared study (its GPU, data path, workers, pairs file) is retrained
    here with this run's execution-only settings; its hyperparameters are kept."""
    elsewhere = {"device": "cuda:7", "data": "streaming", "workers": 12, "memory_fraction": 0.9, "eval_batch_size": 3,
                 "pairs": "/other/machine/pairs.txt", "progress": True}  # fmt: skip
    trial = make_config("step", {**BASE, "epochs": 2, "lr": 5e-3, "weight_decay": 0.1, **elsewhere})
    here = make_config("step", {**BASE, "epochs": 2, "data": "memory", "pairs": pairs(cache)})
    result = retrain_best(tmp_path, open_shards(cache), {"config": dataclasses.asdict(trial)}, here)
    stored = json.loads((tmp_path / "best-run" / "config.json").read_text())["config"]
    assert stored["lr"] == 5e-3 and stored["weight_decay"] == 0.1 and stored["epochs"] == 2
    for name in ("device", "data", "workers", "memory_fraction", "eval_batch_size", "pairs", "progress"):
        assert stored[name] == getattr(here, name), name
    assert result.metrics["data_mode"] == "memory" and result.metrics["device"] == "cpu"
    assert result.metrics["pairs"] == [["class_0", "class_1"]]


def test_grid_runs_every_point_once_and_loss_is_minimised(cache, tmp_path):
    space = build_space("step", ["wd=0,0.1", "depth=1,2", "lr=3e-3"])
    result = run_sweep(cache, "step", tmp_path / "g", space=space, trials=64, parallel=3, sampler="grid",
                       metric="loss", retrain=False, plots=False, **{**BASE, "epochs": 2})  # fmt: skip
    points = sorted((r["params"]["weight_decay"], r["params"]["depth"]) for r in result.rows)
    assert points == [(0.0, 1), (0.0, 2), (0.1, 1), (0.1, 2)]
    assert all(r["metrics"] and r["state"] == "COMPLETE" for r in result.rows)
    losses = [r["value"] for r in result.rows]
    assert losses == sorted(losses) and result.best["direction"] == "minimize"
    assert not (tmp_path / "g" / "best-run").exists()


class PruneOddTrials(optuna.pruners.BasePruner):
    """Prunes odd-numbered trials once they have reported epoch 2."""

    def prune(self, study, trial):
        return trial.number % 2 == 1 and max(trial.intermediate_values, default=0) >= 2


def test_pruned_members_stop_early_are_reported_pruned_and_the_batch_goes_on(cache):
    study = optuna.create_study(direction="maximize", pruner=PruneOddTrials())
    space = build_space("step", ["lr=log:1e-3..1e-2"])
    trials = [study.ask(space.distributions) for _ in range(4)]
    configs = [trial_config("step", BASE, t.params) for t in trials]
    from step_cache.training.stacking.shared_data import DataCache

    states = run_batch(study, trials, configs, DataCache(open_shards(cache)), "top1", pruning=True)
    assert [s.name for s in states] == ["COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    frozen = study.get_trials()
    assert [len(t.intermediate_values) for t in frozen] == [5, 2, 5, 2]
    assert [t.user_attrs["metrics"]["epochs_run"] for t in frozen] == [5, 2, 5, 2]
    assert frozen[1].user_attrs["metrics"]["top1"] == frozen[1].intermediate_values[2]
    assert frozen[0].value == frozen[0].user_attrs["metrics"]["top1"]


def test_sweep_errors(cache, tmp_path):
    space = build_space("step", ["lr=log:1e-4..3e-3"])
    with pytest.raises(SweepError, match="unknown metric 'accuracy'"):
        run_sweep(cache, "step", tmp_path, space=space, metric="accuracy")
    with pytest.raises(SweepError, match="unknown pruner 'early'"):
        run_sweep(cache, "step", tmp_path, space=space, pruner="early", trials=1, **BASE)
    with pytest.raises(SweepError, match="metric='pair_accuracy' needs mirrored class pairs"):
        run_sweep(cache, "step", tmp_path, space=space, metric="pair_accuracy", **BASE)
    with pytest.raises(SweepSpaceError, match=r"num_heads=3: num_heads=3 must be a positive divisor of .* D=16"):
        run_sweep(cache, "step", tmp_path, space=build_space("step", ["heads=1,3"]), **BASE)
    with pytest.raises(SweepSpaceError, match=r"dropout=1\.0: .*dropout=1\.0 must be in"):
        run_sweep(cache, "step", tmp_path, space=build_space("step", ["dropout=0..1"]), **BASE)
    with pytest.raises(SweepError, match="storage= needs study_name="):
        run_sweep(cache, "step", tmp_path, space=space, storage=f"sqlite:///{tmp_path}/x.db", **BASE)
    storage = f"sqlite:///{tmp_path}/s.db"
    run_sweep(cache, "step", tmp_path / "a", space=space, trials=0, storage=storage, study_name="s", **BASE)
    with pytest.raises(
        SweepError, match=r"study 's' was started with other settings \(config.epochs: 5 in the study, 7 here\)"
    ):
        run_sweep(cache, "step", tmp_path / "b", space=space, trials=0, storage=storage, study_name="s",
                  **{**BASE, "epochs": 7})  # fmt: skip
    # A study started by a step-cache before a setting existed (its stored config lacks it) ran it at its default.
    import optuna

    study = optuna.load_study(study_name="s", storage=storage)
    stored = study.user_attrs["sweep"]
    study.set_user_attr("sweep", {**stored, "config": {k: v for k, v in stored["config"].items() if k != "views"}})
    run_sweep(cache, "step", tmp_path / "c", space=space, trials=0, storage=storage, study_name="s", **BASE)
    with pytest.raises(SweepError, match=r"\(config.views: 'on' in the study, 'off' here\)"):
        run_sweep(cache, "step", tmp_path / "d", space=space, trials=0, storage=storage, study_name="s",
                  **{**BASE, "views": "off"})  # fmt: skip


WORKER = textwrap.dedent("""
    import sys, time, pathlib
    import torch
    torch.set_num_threads(1)
    from step_cache.sweeps.space import build_space
    from step_cache.sweeps.study import run_sweep
    cache, db, out, me, other = sys.argv[1:]
    pathlib.Path(me).touch()
    while not pathlib.Path(other).exists():  # start together, so that both workers take trials
        time.sleep(0.05)
    run_sweep(cache, "step", out, space=build_space("step", ["lr=log:1e-4..1e-2", "wd=0,0.05,0.1"]), trials=12,
              parallel=2, storage=f"sqlite:///{db}", study_name="shared", retrain=False, plots=False,
              epochs=2, batch_size=8, progress=False)
""")


def test_two_processes_share_one_sqlite_study_without_duplicates(cache, tmp_path):
    db = tmp_path / "sweep.db"
    processes = []
    for i in range(2):
        ready, other = tmp_path / f"ready{i}", tmp_path / f"ready{1 - i}"
        command = [sys.executable, "-c", WORKER, cache, db, tmp_path / f"out{i}", ready, other]
        processes.append(subprocess.Popen(list(map(str, command)), stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{db}")
    finished = [t for t in study.get_trials() if has_outcome(t)]
    assert len(finished) == 12 and all(t.state.name in ("COMPLETE", "PRUNED") for t in finished)
    # Every configuration once: both workers start with --seed 0, yet the second draws its own values.
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 12, [t.params for t in finished]
    assert not [t.number for t in study.get_trials() if t.state.name in ("RUNNING", "WAITING")]
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both processes did work
    # Each worker's files describe the whole study once it is done; the last one to finish saw all 12.
    counts = [len(json.loads((tmp_path / f"out{i}" / "trials.json").read_text())["trials"]) for i in range(2)]
    assert max(counts) == 12


def test_streaming_and_in_memory_stacks_train_identically(cache):
    options = [{**BASE, "epochs": 2, "lr": lr, "workers": 0} for lr in (1e-2, 3e-3)]
    memory = train_stacked(cache, [make_config("step", {**o, "data": "memory"}) for o in options])
    streaming = train_stacked(cache, [make_config("step", {**o, "data": "streaming"}) for o in options])
    for a, b in zip(memory, streaming, strict=True):
        assert b.metrics["data_mode"] == "streaming" and a.metrics["data_mode"] == "memory"
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
        assert a.metrics["top1"] == b.metrics["top1"] and a.metrics["loss"] == b.metrics["loss"]
