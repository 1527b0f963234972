"""``--optimizer sgd``: SGD with momentum 0.9 (DINOv2's linear evaluation) for a lone probe and, as ``StackedSGD``,
for every member of a stack (``--seeds``, sweeps, a protocol's lr grid), with no host tensor per step."""

from __future__ import annotations

import json

import pytest
import torch
from stacked_optimizers import step_stack_and_lone

from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.stacking import train_stacked
from step_cache.training.stacking.sgd import StackedSGD
from step_cache.training.trainer import train_probe


def test_stacked_sgd_steps_each_member_exactly_like_torch_sgd():
    """Same gradients in, same weights out, bit for bit in float32 (what runs train in): per-member lr, weight
    decay (added to the gradient, not on norms, biases, tokens), warm-up + cosine, and gradient clipping (active,
    inactive, off); the same multiplications and additions in the same order as torch's single-tensor SGD."""
    settings = [(3e-2, 0.05, 2, 1.0), (1e-2, 0.0, 0, 0.0), (7e-2, 0.1, 3, 0.05)]  # lr, wd, warm-up steps, clip
    stack, lone = step_stack_and_lone(StackedSGD, "sgd", settings)
    for k, model in enumerate(lone):
        for name, p in model.named_parameters():
            assert torch.equal(stack.params[name][k], p), (k, name)
    assert not torch.equal(stack.params["head.weight"][0], stack.params["head.weight"][2])


def test_an_unknown_optimizer_is_refused_naming_the_choices():
    with pytest.raises(TrainConfigError, match=r"optimizer must be one of adamw, sgd, got 'adam'"):
        make_config("linear", {"optimizer": "adam"})
    assert make_config("linear", {}).optimizer == "adamw"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sgd-tokens") / "shards"
    write_token_cache(directory, task="static", num_classes=3, videos_per_class=10, dim=16, val_every=5)
    return directory


def test_an_lr_grid_of_sgd_linear_probes_trains_as_one_stack_like_lone_runs(cache, tmp_path):
    """Each member of a stacked SGD lr grid gives what the same config gives alone: the same predictions (so the
    same accuracies and best epoch) and losses to float rounding (the stack's vmapped matmuls sum in another order;
    an SGD step moves a weight by lr x momentum buffer, so rounding noise in a gradient moves it by ~1e-7 of that)."""
    base = {"epochs": 6, "batch_size": 8, "progress": False, "optimizer": "sgd", "weight_decay": 0.0,
            "warmup_epochs": 0.0, "clip_grad": 0.0}  # fmt: skip
    lrs = (0.1, 0.02, 0.005)
    configs = [make_config("linear", {**base, "lr": lr}) for lr in lrs]
    results = train_stacked(cache, configs, keep_weights=True)
    assert [r.metrics["stacked_members"] for r in results] == [3, 3, 3]
    for lr, member in zip(lrs, results, strict=True):
        lone = train_probe(cache, "linear", tmp_path / f"lr-{lr}", **base, lr=lr)
        lone_val = lone.metrics["per_seed"][0]["val"]
        assert member.metrics["best_epoch"] == lone.metrics["best_epoch"]
        for key in ("top1", "mean_class_accuracy", "confusion_matrix"):
            assert member.metrics[key] == lone_val[key], (lr, key)
        for mine, theirs in zip(member.history, lone.history, strict=True):
            assert mine["lr"] == theirs["lr"]
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)
        config = json.loads((lone.run_dir / "config.json").read_text())["config"]
        assert config["optimizer"] == "sgd"
    assert results[0].metrics["top1"] >= 0.8  # it learned
    # SGD and AdamW differ: the same lr trained with AdamW gives another first-epoch loss
    adamw = train_probe(cache, "linear", tmp_path / "adamw", **{**base, "optimizer": "adamw"}, lr=lrs[0])
    assert adamw.history[0]["train_loss"] != pytest.approx(results[0].history[0]["train_loss"], rel=1e-3)


def test_seeds_resume_restores_the_momentum_buffers(cache, tmp_path):
    """A killed ``--seeds`` SGD run resumes exactly: the state holds the momentum buffers (``resume.stack_state``)."""
    settings = {"epochs": 4, "batch_size": 8, "progress": False, "optimizer": "sgd", "seeds": 2, "lr": 0.05}
    whole = train_probe(cache, "linear", tmp_path / "whole", **settings)
    stopped = []

    def stop_after_two(record):
        if record["epoch"] == 2:
            stopped.append(True)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_probe(cache, "linear", tmp_path / "resumed", on_epoch=stop_after_two, **settings)
    state = torch.load(tmp_path / "resumed" / "last_state.pt", weights_only=False)
    assert set(state["momentum"]) == set(state["params"]) and "exp_avg" not in state
    resumed = train_probe(cache, "linear", tmp_path / "resumed", resume=True, **settings)
    assert resumed.metrics["top1"] == whole.metrics["top1"]
    for mine, theirs in zip(resumed.metrics["per_seed"], whole.metrics["per_seed"], strict=True):
        assert mine["val"]["loss"] == theirs["val"]["loss"]
