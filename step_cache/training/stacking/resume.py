"""The state of a ``StackedRun`` after an epoch, and restoring it, so ``train-probe --seeds --resume`` continues a
killed stack exactly.

A member may have left the stack before the kill (early stopping: ``training/early_stopping.py``): the stack then
holds only the active members' parameters, optimizer moments and best weights, and the state keeps, for every
member that left, what it had finished with — its metrics (of its best weights), those weights, its history and
the epoch it stopped after. Restoring drops the same members again before loading the tensors, so the stack has
the shape it had when the state was saved, and a member that stopped never trains or changes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from step_cache.training.records import TrainingTime
from step_cache.training.stacking.member_optim import StackedOptimizer
from step_cache.training.stacking.members import StackedProbes


class Member(Protocol):
    """What the state keeps of one member (``stacked_run.MemberResult`` is one)."""

    history: list[dict[str, Any]]
    metrics: dict[str, Any] | None
    stopped_after: int | None
    weights: dict[str, torch.Tensor] | None
    diverged: str | None


class Stack(Protocol):
    """What the state saves of a stack and restores (``stacked_run.StackedRun`` is one; that module imports this one,
    so the state is typed by what it reads, not by that class)."""

    configs: Sequence[Any]
    results: Sequence[Member]
    active: list[int]  # stack slot -> member index
    stack: StackedProbes
    best_params: dict[str, torch.Tensor]
    optimizer: StackedOptimizer
    best: list[tuple[float, ...]]
    best_epoch: list[int]
    device: torch.device
    training_time: TrainingTime
    start_epoch: int

    def drop(self, slots: list[int]) -> None: ...


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in tensors.items()}


def stack_state(run: Stack, epochs_done: int) -> dict[str, Any]:
    """Everything ``restore_stack`` needs to continue ``run`` exactly after ``epochs_done`` epochs, on the CPU."""
    if not run.active:
        raise RuntimeError("a stack whose members have all stopped has nothing left to checkpoint")
    left = {
        member: {
            "stopped_after": result.stopped_after,
            "metrics": result.metrics,
            "weights": result.weights,
            "diverged": result.diverged,
        }
        for member, result in enumerate(run.results)
        if member not in run.active
    }
    return {
        "epoch": epochs_done,
        "active": list(run.active),
        "left": left,
        "params": _cpu(run.stack.params),
        "best_params": _cpu(run.best_params),
        # the optimizer's per-parameter state by its names (AdamW: exp_avg, exp_avg_sq; SGD: momentum)
        **{kind: _cpu(tensors) for kind, tensors in run.optimizer.state.items()},
        "optimizer_steps": run.optimizer.steps,
        "best": [list(score) for score in run.best],
        "best_epoch": list(run.best_epoch),
        "histories": [result.history for result in run.results],
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
        "training_time": [run.training_time.seconds, run.training_time.data_wait, run.training_time.clips],
    }


def restore_stack(run: Stack, state: dict[str, Any]) -> None:
    """Continue a freshly built ``run`` (all members active) from a ``stack_state``: the members that had left are
    dropped again with what they finished with, then parameters, optimizer moments and step, best checkpoints,
    histories and RNG are loaded."""
    active = state.get("active", list(range(len(run.configs))))  # a state saved before members could leave
    left = [slot for slot in range(len(run.configs)) if slot not in active]
    for member, saved in state.get("left", {}).items():
        result = run.results[int(member)]
        result.stopped_after, result.metrics = saved["stopped_after"], saved["metrics"]
        result.weights, result.diverged = saved["weights"], saved["diverged"]
    if left:
        run.drop(left)  # a fresh stack: slot == member index
    run.stack.load(state["params"])
    for name, value in state["best_params"].items():
        run.best_params[name] = value.to(run.device)
    for kind, own in run.optimizer.state.items():
        for name, value in state[kind].items():
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
