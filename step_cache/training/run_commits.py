"""When a training run commits its state, and what a commit writes.

A commit is ``last_state.pt`` (everything ``--resume`` needs, the best weights included), then the files derived
from it: ``last.pt``, ``best.pt`` (each recorded in ``checkpoints.json``) and ``metrics.jsonl``, each renamed into
place and fsynced. Committed every epoch, a small set's run (one batch per epoch) spent about a quarter of its
epoch time writing them (docs/training.md "Commit cadence"). So a run keeps its best weights in memory and commits
after its first epoch, then once ``COMMIT_EVERY_S`` seconds have passed since the last commit, and after its last
epoch. A one-seed run given an ``on_epoch`` callback commits every epoch before calling it (the callback's
documented contract: it sees saved epochs, and raising from it stops the run there); with ``--seeds`` the callback
sees the first seed's epoch just before the stack's commit of it.

Between commits each epoch's line is appended to ``metrics.jsonl`` (no fsync), so the file follows the run live.
``--resume`` continues from the last commit: it rewrites ``metrics.jsonl`` from the committed history (dropping the
lines of later epochs) and runs those epochs again, exactly (batches, views and dropout are keyed by the committed
state). A kill loses at most ``COMMIT_EVERY_S`` seconds of training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import torch

from step_cache.training import runs
from step_cache.training.records import TrainingTime
from step_cache.training.run_checkpoints import save_checkpoint

COMMIT_EVERY_S = 30.0  # the most training a kill can lose; tests set it to 0 (every epoch) or to infinity


class CommitClock:
    """Decides after each epoch whether to commit: after the first and the last epoch, and once ``every`` seconds
    (``COMMIT_EVERY_S`` when None) have passed since the previous commit."""

    def __init__(self, every: float | None = None) -> None:
        self.every = every
        self.last: float | None = None  # monotonic time of the last commit; None: none yet in this process

    def due(self, epochs_done: int, epochs: int) -> bool:
        every = COMMIT_EVERY_S if self.every is None else self.every
        return self.last is None or epochs_done >= epochs or time.monotonic() - self.last >= every

    def committed(self) -> None:
        self.last = time.monotonic()


def append_epoch(run_dir: Path, record: dict[str, Any]) -> None:
    """One epoch's line at the end of ``metrics.jsonl``, between commits: strict JSON, no fsync (the commit
    rewrites the whole file durably)."""
    path = run_dir / runs.EPOCH_LOG
    line = runs.strict_json(record, f"{path}: epoch {record.get('epoch')}") + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)


def write_derived(
    run_dir: Path,
    model: torch.nn.Module,
    best_weights: dict[str, torch.Tensor] | None,
    history: list[dict[str, Any]],
    best_epoch: int,
) -> None:
    """last.pt, best.pt and metrics.jsonl from the committed state. ``best_weights`` None (a state written before
    best weights were part of it): best.pt is the model's when the last epoch is the best, else it is on disk."""
    save_checkpoint(run_dir, run_dir / runs.LAST, model)
    if best_weights is not None:
        save_checkpoint(run_dir, run_dir / runs.BEST, best_weights)
    elif history and best_epoch == history[-1]["epoch"]:
        save_checkpoint(run_dir, run_dir / runs.BEST, model)
    runs.write_epoch_log(run_dir, history)


class CommittedRun(Protocol):
    """What a commit saves of a one-seed run and restores (``trainer._Run`` is one)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None  # None until build_optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device
    history: list[dict[str, Any]]
    best: tuple[float, ...]  # records.validation_score of the best epoch
    best_epoch: int
    best_weights: dict[str, torch.Tensor] | None
    training_time: TrainingTime
    start_epoch: int

    def build_optimizer(self) -> None: ...


def run_state(run: CommittedRun, epochs_done: int) -> dict[str, Any]:
    """Everything ``restore_run`` needs to continue ``run`` exactly after ``epochs_done``."""
    return {
        "epoch": epochs_done,
        "model": runs.weights_of(run.model),
        "best_model": run.best_weights,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
        "history": run.history,
        "best": list(run.best),
        "best_epoch": run.best_epoch,
        "train_time": run.training_time.seconds,
        "data_wait": run.training_time.data_wait,
        "train_clips": run.training_time.clips,
    }


def restore_run(run: CommittedRun, state: dict[str, Any]) -> None:
    """Put ``run`` back in the committed ``state``; builds its optimizer."""
    run.model.load_state_dict(state["model"])
    run.build_optimizer()
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if run.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    run.start_epoch = int(state["epoch"])
    run.history = list(state["history"])
    run.best, run.best_epoch = tuple(state["best"]), int(state["best_epoch"])
    run.best_weights = state.get("best_model")  # absent from states written before in-memory best weights
    run.training_time = TrainingTime(float(state["train_time"]), float(state["data_wait"]), int(state["train_clips"]))
