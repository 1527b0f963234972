"""The state of a stacked run (``stacking.engine.StackedRun``) that ``train-probe --seeds`` commits, and putting a
stack back in it: parameters, optimizer moments and step, best checkpoints, histories, RNG, training time. Only for
a stack whose members are all still active (a multi-seed run; a sweep drops members and does not resume)."""

from __future__ import annotations

from typing import Any

import torch

from step_cache.training.records import TrainingTime


def stack_state(run: Any, epochs_done: int) -> dict[str, Any]:
    """Everything ``restore_stack`` needs to continue ``run`` (a ``StackedRun``; typed Any, as engine imports this
    module) exactly after ``epochs_done`` epochs, on the CPU."""
    if len(run.active) != len(run.configs):
        raise RuntimeError("a stack that dropped members cannot be checkpointed")

    def cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: value.detach().cpu().clone() for name, value in tensors.items()}

    return {
        "epoch": epochs_done,
        "params": cpu(run.stack.params),
        "best_params": cpu(run.best_params),
        "exp_avg": cpu(run.optimizer.exp_avg),
        "exp_avg_sq": cpu(run.optimizer.exp_avg_sq),
        "optimizer_steps": run.optimizer.steps,
        "best": [list(score) for score in run.best],
        "best_epoch": list(run.best_epoch),
        "histories": [result.history for result in run.results],
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
        "training_time": [run.training_time.seconds, run.training_time.data_wait, run.training_time.clips],
    }


def restore_stack(run: Any, state: dict[str, Any]) -> None:
    """Continue from a ``stack_state``: parameters, optimizer moments and step, best checkpoints, histories, RNG."""
    run.stack.load(state["params"])
    for name, value in state["best_params"].items():
        run.best_params[name] = value.to(run.device)
    for own, saved in (
        (run.optimizer.exp_avg, state["exp_avg"]),
        (run.optimizer.exp_avg_sq, state["exp_avg_sq"]),
    ):
        for name, value in saved.items():
            own[name].copy_(value)
    run.optimizer.steps = int(state["optimizer_steps"])
    run.best = [tuple(score) for score in state["best"]]
    run.best_epoch = list(state["best_epoch"])
    for result, history in zip(run.results, state["histories"], strict=True):
        result.history = list(history)
    torch.set_rng_state(state["torch_rng"])
    if run.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    run.training_time = TrainingTime(*state["training_time"])
    run.start_epoch = int(state["epoch"])
