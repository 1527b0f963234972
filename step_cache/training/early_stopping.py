"""Early stopping: the one rule ``train_probe``, every member of a ``--seeds`` stack and every sweep trial (and
its retrain) follow.

The rule: a run stops after the epoch at which ``patience`` epochs have passed without a better validation
score — the best-checkpoint criterion of ``records.validation_score`` (higher val top-1, ties broken by the lower
val loss), so the stop looks at exactly what picks ``best.pt`` — counted from the later of the best epoch and the
end of the warm-up. ``patience`` defaults to ``max(MIN_PATIENCE, ceil(PATIENCE_SHARE x planned epochs))``.

Why these choices:

- The learning-rate schedule (warm-up, then a cosine to 0 over the *planned* epochs) does not change when a run
  stops early, so a stopped run is the first epochs of the full run, figure for figure, and its best checkpoint is
  the full run's best among those epochs: early stopping can only lose the improvements the full run finds later.
- The patience scales with the schedule: the automatic schedule ranges from 30 to 1000 epochs
  (``schedule.resolve_schedule``), and a plateau of 10 epochs in a 1000-epoch run is noise, not a verdict.
  The share was checked on the benchmarks of docs/training.md ("Early stopping").
- Epochs of the warm-up do not count: the learning rate is still rising there, and a flat start says nothing.

The rule is a function of the planned epochs, the epochs done and the best epoch, all of which a run's state file
already holds, so ``--resume`` continues it exactly (mid-patience included) without extra state.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

MIN_PATIENCE = 10  # epochs: the floor, for short schedules (30 epochs -> 10)
PATIENCE_SHARE = 0.3  # of the planned epochs


class StopSettings(Protocol):
    """The fields of ``config.TrainConfig`` the rule reads (a protocol: the config module imports this one)."""

    epochs: int | None
    warmup_epochs: float
    early_stop: bool
    patience: int | None


def auto_patience(epochs: int) -> int:
    """The default patience of a run of ``epochs`` planned epochs."""
    return max(MIN_PATIENCE, math.ceil(PATIENCE_SHARE * epochs))


def resolve_patience(early_stop: bool, patience: int | None, epochs: int) -> int | None:
    """The patience a run uses: the given one, else ``auto_patience``; None when early stopping is off."""
    if not early_stop:
        return None
    return patience if patience is not None else auto_patience(epochs)


def warmup_end(config: StopSettings) -> int:
    """The last warm-up epoch (1-based; 0 without warm-up): patience counts only the epochs after it."""
    return math.ceil(config.warmup_epochs)


def should_stop(config: StopSettings, epochs_done: int, best_epoch: int) -> bool:
    """Whether a run (``config`` with its schedule resolved) stops after ``epochs_done`` epochs, its best so far
    being (1-based) ``best_epoch``. Never after the last planned epoch: that run is simply complete."""
    if not config.early_stop or epochs_done >= config.epochs:
        return False
    patience = resolve_patience(True, config.patience, config.epochs)
    return epochs_done - max(best_epoch, warmup_end(config)) >= patience


def is_finished(config: StopSettings, epochs_done: int, best_epoch: int) -> bool:
    """Whether a run with this state has nothing left to train: every planned epoch done, or stopped early."""
    return epochs_done >= config.epochs or should_stop(config, epochs_done, best_epoch)


def early_stop_record(config: StopSettings, epochs_done: int, best_epoch: int) -> dict[str, Any]:
    """The ``early_stop`` entry of ``metrics.json``: whether the run stopped before its planned epochs, the last
    epoch it trained, its best epoch, the planned epochs and the patience (None when early stopping was off)."""
    return {
        "stopped": should_stop(config, epochs_done, best_epoch),
        "epoch": epochs_done,
        "best_epoch": best_epoch,
        "planned_epochs": config.epochs,
        "patience": resolve_patience(config.early_stop, config.patience, config.epochs),
        "warmup_epochs": warmup_end(config),
    }


def describe_stop(config: StopSettings, epochs_done: int, best_epoch: int) -> str:
    """The log line of a stop."""
    patience = resolve_patience(True, config.patience, config.epochs)
    return (
        f"stopped early after epoch {epochs_done} of {config.epochs}: no better validation score (val top-1, "
        f"then val loss) since epoch {best_epoch} (patience {patience} epochs)"
    )
