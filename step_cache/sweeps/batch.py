"""One batch of asked trials: trained together as stacks (``stacking.train_stacked``), each member's per-epoch
validation metric reported to the pruner, and each outcome told to Optuna (COMPLETE with the objective, PRUNED, or
FAIL with the reason it diverged). A trial whose batch is interrupted goes back to the queue."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import Trial, TrialState

from step_cache.sweeps.distinct import is_duplicate
from step_cache.sweeps.results import SUMMARY_KEYS
from step_cache.sweeps.search import METRICS
from step_cache.sweeps.storage import requeue
from step_cache.training.config import TrainConfig
from step_cache.training.stacking.shared_data import DataCache
from step_cache.training.stacking.stacked_run import MemberResult, train_stacked

log = logging.getLogger(__name__)


def _finite(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def _record_result(trial: Trial, config: TrainConfig, result: MemberResult, metric: str) -> None:
    if result.metrics is not None:
        summary = {key: _finite(result.metrics.get(key)) for key in SUMMARY_KEYS}
    else:  # stopped early: its last epoch's validation
        last = result.history[-1]
        summary = {key: _finite(last.get(f"val_{key}")) for key in ("top1", "top5", "mean_class_accuracy", "loss",
                                                                     "pair_accuracy")}  # fmt: skip
    summary["epochs_run"] = len(result.history)
    trial.set_user_attr("metrics", summary)
    trial.set_user_attr("config", dataclasses.asdict(config))
    trial.set_user_attr("worker", worker_name())


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_batch(
    study: optuna.Study, trials: Sequence[Trial], configs: Sequence[TrainConfig], data: DataCache, metric: str,
    pruning: bool, exclusive: bool = False,
) -> list[TrialState | None]:  # fmt: skip
    """Train one batch of asked trials (stacked by shape) and tell Optuna each outcome; returns the states (None:
    the trial was taken over by another worker after its heartbeat was judged late, or another trial holds its
    configuration, so its outcome is not ours).
    ``exclusive``: this process is the storage's only writer (the journal in OUT), see ``storage.requeue``."""
    report_key = METRICS[metric][1]
    lost: set[int] = set()

    def on_epoch(index: int, record: dict[str, Any]) -> bool:
        value = _finite(record.get(report_key))
        if value is None or index in lost:
            return index in lost
        try:
            trials[index].report(value, record["epoch"])
        except UpdateFinishedTrialError:  # re-queued by another worker: stop training it (a pruned member is dropped)
            lost.add(index)
            return True
        return pruning and trials[index].should_prune()

    told: dict[int, TrialState | None] = {}
    try:
        results = train_stacked(data.shards, configs, on_epoch=on_epoch, data=data)
        for index, (trial, config, result) in enumerate(zip(trials, configs, results, strict=True)):
            told[index] = None if index in lost else _tell(study, trial, config, result, metric)
    finally:  # an error or Ctrl-C: no trial stays RUNNING; each goes back to the queue for the next run
        for index, trial in enumerate(trials):
            if index not in told and index not in lost:
                requeue(study, trial, "was interrupted", exclusive=exclusive)
    return [told[index] for index in range(len(trials))]


def _tell(
    study: optuna.Study, trial: Trial, config: TrainConfig, result: MemberResult, metric: str
) -> TrialState | None:
    try:
        if is_duplicate(study, trial):  # another worker asked the same configuration at the same moment
            return None
        _record_result(trial, config, result, metric)
        failure = result.diverged
        if failure is None and result.metrics is not None and _finite(result.metrics.get(metric)) is None:
            failure = f"{metric} is not a finite number (diverged?)"
        if failure is not None:
            trial.set_user_attr("failure", failure)
            study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL
        if result.metrics is None:
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        study.tell(trial, float(result.metrics[metric]))
        return TrialState.COMPLETE
    except UpdateFinishedTrialError:
        log.warning("trial %d was re-queued by another worker (late heartbeat); its copy counts, not this run",
                    trial.number)  # fmt: skip
        return None
