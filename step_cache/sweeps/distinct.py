"""No configuration runs twice in a study: an asked trial whose parameters another trial already holds (one with an
outcome, or a pending one with a lower number) is skipped, told FAIL and marked ``duplicate_of``, and another is
asked; when every configuration of a finite space has a trial, the space is exhausted and the sweep stops.

Why both this and per-worker sampler seeds (``search.worker_seed``): distinct seeds keep restarts and workers from
replaying one random stream, but on a space of choices two streams still meet, and TPE proposes near its best
trials. Of two workers that ask one configuration at once, the lower trial number keeps it; the check runs again
before an outcome is told (``is_duplicate``), so a race between the ask and its check never gives two outcomes.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, Trial, TrialState

from step_cache.sweeps.search import SweepError
from step_cache.sweeps.storage import DUPLICATE, has_outcome, is_skipped

log = logging.getLogger(__name__)

ASKS = 32  # asks from the sampler before a configuration not yet tried is drawn directly
_PENDING = (TrialState.RUNNING, TrialState.WAITING)


def params_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def space_size(distributions: dict[str, BaseDistribution]) -> int | None:
    """How many configurations the space holds; None when a parameter is a continuous range."""
    return None if (values := _values(distributions)) is None else math.prod(len(v) for v in values.values())


def _values(distributions: dict[str, BaseDistribution]) -> dict[str, list[Any]] | None:
    values = {name: _choices(dist) for name, dist in distributions.items()}
    return None if any(v is None for v in values.values()) else values  # type: ignore[return-value]


def _choices(dist: BaseDistribution) -> list[Any] | None:
    """The values a parameter can take, None for a continuous range."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        return [dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)]
    return None


def holder_of(trials: Sequence[FrozenTrial], number: int, params: dict[str, Any]) -> int | None:
    """The number of the trial that holds ``params`` already, if any: one with an outcome, or a pending one with a
    lower number than ``number``."""
    key = params_key(params)
    for other in trials:
        if other.number == number or is_skipped(other) or params_key(other.params) != key:
            continue
        if has_outcome(other) or (other.state in _PENDING and other.number < number):
            return other.number
    return None


def taken(trials: Sequence[FrozenTrial]) -> set[tuple]:
    """The configurations with an outcome or pending."""
    return {params_key(t.params) for t in trials if not is_skipped(t) and (has_outcome(t) or t.state in _PENDING)}


def exhausted(study: optuna.Study, size: int | None) -> bool:
    """Every configuration of a finite space has a trial, and none waits to be asked."""
    if size is None:
        return False
    trials = study.get_trials(deepcopy=False)
    return len(taken(trials)) >= size and not any(t.state == TrialState.WAITING for t in trials)


def skip(study: optuna.Study, trial: Trial, holder: int) -> None:
    trial.set_user_attr(DUPLICATE, holder)
    study.tell(trial, state=TrialState.FAIL)
    log.debug("trial %d: the configuration of trial %d, skipped", trial.number, holder)


def is_duplicate(study: optuna.Study, trial: Trial) -> bool:
    """Before an outcome is told: True (and the trial skipped) when another trial took its configuration
    meanwhile."""
    holder = holder_of(study.get_trials(deepcopy=False), trial.number, trial.params)
    if holder is None:
        return False
    log.warning("trial %d: trial %d has the same configuration; this one's outcome is dropped", trial.number, holder)
    skip(study, trial, holder)
    return True


def ask_distinct(
    study: optuna.Study, distributions: dict[str, BaseDistribution], size: int | None, seed: int
) -> Trial | None:
    """Ask a trial whose configuration no other trial holds; None when the (finite) space is exhausted.

    After ``ASKS`` duplicates from the sampler, a configuration not yet tried is enqueued directly (a random
    untried point of a finite space, a uniform draw of a continuous one), so a sampler stuck on its favourite
    values cannot stall the sweep."""
    rng = random.Random(hash((seed, len(study.get_trials(deepcopy=False)))))  # ints hash alike in every process
    for attempt in range(2 * ASKS):
        if attempt >= ASKS:
            params = _untried(study, distributions, rng)
            if params is None:
                return None
            study.enqueue_trial(params)
        trial = _ask(study, distributions)
        holder = holder_of(study.get_trials(deepcopy=False), trial.number, trial.params)
        if holder is None:
            return trial
        skip(study, trial, holder)
        if exhausted(study, size):
            return None
    raise SweepError(f"no configuration not yet tried was found in {2 * ASKS} asks")


def _ask(study: optuna.Study, distributions: dict[str, BaseDistribution]) -> Trial:
    with warnings.catch_warnings():  # we record the heartbeats ourselves (store.beats), not optimize()
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return study.ask(distributions)


def _untried(
    study: optuna.Study, distributions: dict[str, BaseDistribution], rng: random.Random
) -> dict[str, Any] | None:
    used = taken(study.get_trials(deepcopy=False))
    values = _values(distributions)
    if values is not None:
        names = list(values)
        free = [
            p for p in itertools.product(*values.values()) if params_key(dict(zip(names, p, strict=True))) not in used
        ]
        return dict(zip(names, rng.choice(free), strict=True)) if free else None
    params = {}
    for name, dist in distributions.items():
        choices = _choices(dist)
        if choices is not None:
            params[name] = rng.choice(choices)
        elif dist.log:  # a continuous FloatDistribution
            params[name] = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
        else:
            params[name] = rng.uniform(dist.low, dist.high)
    return params
