"""How Optuna searches a sweep: the objectives (metric -> direction and the per-epoch key reported to the
pruner), the samplers and the pruners."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from step_cache.errors import StepCacheError
from step_cache.sweeps.space import SearchSpace

# objective -> (direction, key of the per-epoch record reported to the pruner)
METRICS = {
    "top1": ("maximize", "val_top1"),
    "top5": ("maximize", "val_top5"),
    "mean_class_accuracy": ("maximize", "val_mean_class_accuracy"),
    "pair_accuracy": ("maximize", "val_pair_accuracy"),
    "loss": ("minimize", "val_loss"),
}
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none", "hyperband")


class SweepError(StepCacheError, ValueError):
    """Sweep settings that cannot work (unknown sampler / pruner / metric, a study made with other settings)."""


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler whose ``after_trial`` does not call ``study.stop()`` on an exhausted grid: that only works
    inside ``study.optimize`` and raises under ask/tell, where the trial budget (capped at the grid size) ends the
    loop instead."""

    def after_trial(self, study: optuna.Study, trial: Any, state: TrialState, values: Any) -> None:
        return None


def worker_seed(seed: int, first_trial: int) -> int:
    """The sampler seed of a process whose first asked trial is number ``first_trial``: ``seed`` itself for the
    study's first trial (a single uninterrupted worker draws the same sequence as ever), else a seed derived from
    both. Trial numbers are unique in a study, so a restarted sweep or another worker never replays a stream."""
    if first_trial == 0:
        return seed
    return int(np.random.SeedSequence([seed, first_trial]).generate_state(1)[0])


class _WorkerSeeded:
    """Reseeds a sampler's random streams with ``worker_seed`` at the first trial this process asks (Optuna calls
    ``before_trial`` once the trial, and so its number, exists). Without it every restart and every worker seeded
    with ``--seed`` asks the same first values again (Optuna's docs: give each process its own seed)."""

    _base_seed: int
    _reseeded = False

    def before_trial(self, study: optuna.Study, trial: Any) -> None:
        if not self._reseeded:
            self._reseeded = True
            if trial.number != 0:
                for part in self._streams():
                    part._rng.rng.seed(worker_seed(self._base_seed, trial.number))
        super().before_trial(study, trial)  # type: ignore[misc]

    def _streams(self) -> list[Any]:
        return [self]


class _TPESampler(_WorkerSeeded, optuna.samplers.TPESampler):
    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)  # constant_liar (the default) keeps parallel asks apart
        self._base_seed = seed

    def _streams(self) -> list[Any]:
        return [self, self._random_sampler]  # its own draws and its random start-up trials


class _RandomSampler(_WorkerSeeded, optuna.samplers.RandomSampler):
    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._base_seed = seed


def make_sampler(name: str, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return _TPESampler(seed)
    if name == "random":
        return _RandomSampler(seed)
    if name == "grid":
        return _AskTellGridSampler(space.grid(), seed=seed)
    raise SweepError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


def make_pruner(name: str, epochs: int | None) -> optuna.pruners.BasePruner:
    if name == "median":
        # Compares with *completed* trials at the same epoch, so the first batch of a sweep is never pruned;
        # steps are 1-based epochs, and the first epoch is never judged (too early to tell).
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "hyperband":  # epochs None (automatic schedule): "auto" takes the first finished trial's
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto", reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise SweepError(f"unknown pruner {name!r}; choose one of: {', '.join(PRUNERS)}")
