"""``run_sweep``: Optuna drives the search, asking ``parallel`` trials at a time and training them as stacked
batches (``stacked.train_stacked``), reporting each member's per-epoch validation metric to the pruner and
telling the outcome (COMPLETE with the objective, or PRUNED).

Storage is in memory by default; with an RDB URL (``sqlite:///sweep.db``, ``postgresql://...``) and a study name
several processes or machines work on one study: ``trials`` is the study's total budget (trial numbers 0 to
trials − 1), each worker asks while trials remain, and a trial asked past the budget in a race is told FAIL
without running (marked ``surplus``). The first worker records the sweep's settings in the study; a worker with
other settings is refused."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import Trial, TrialState
from tqdm import tqdm

from step_cache.cache.shards import ShardSet, open_shards
from step_cache.extras import MissingExtraError, require
from step_cache.probes import build_probe
from step_cache.stacking.engine import MemberResult, train_stacked
from step_cache.stacking.grouping import group_by_shape
from step_cache.stacking.shared_data import DataCache
from step_cache.sweeps.results import SUMMARY_KEYS, best_trial, retrain_best, write_results
from step_cache.sweeps.space import SearchSpace, SweepSpaceError, probe_option_names
from step_cache.training.config import LOCAL_FIELDS, TrainConfig, make_config, with_config_defaults
from step_cache.training.run_data import resolve_pairs, token_subset
from step_cache.training.token_data import select_tokens
from step_cache.training.trainer import TrainResult

log = logging.getLogger(__name__)

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


class SweepError(ValueError):
    """Sweep settings that cannot work (unknown sampler / pruner / metric, a study made with other settings)."""


@dataclass
class SweepResult:
    out: Path
    study: optuna.Study
    rows: list[dict[str, Any]]  # trials.json's trials, best first
    best: dict[str, Any] | None  # best.json
    best_run: TrainResult | None = None
    figures: list[Path] = field(default_factory=list)


def trial_config(probe: str, options: dict[str, Any], params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one trial: base options, then the trial's parameters (probe options go into
    ``probe_options``)."""
    options = dict(options)
    probe_opts = dict(options.pop("probe_options", None) or {})
    structural = probe_option_names(probe)
    for name, value in params.items():
        if name in structural:
            probe_opts[name] = value
        else:
            options[name] = value
    return make_config(probe, {**options, "probe_options": probe_opts})


def validate_space(space: SearchSpace, probe: str, options: dict[str, Any], shards: ShardSet) -> None:
    """Every end of every range and every choice must give a valid config and probe (checked on the meta
    device: no memory, no time), so a bad value fails now, not after an hour of trials."""
    for name, distribution in [*space.distributions.items(), *((k, None) for k in space.fixed)]:
        if distribution is None:
            values = [space.fixed[name]]
        elif isinstance(distribution, optuna.distributions.CategoricalDistribution):
            values = list(distribution.choices)
        else:
            values = [distribution.low, distribution.high]
        for value in values:
            try:
                config = trial_config(probe, options, {**space.fixed, name: value})
                selection = select_tokens(shards.layout, token_subset(config, shards))
                with torch.device("meta"):
                    build_probe(
                        probe,
                        dim=shards.layout.dim,
                        num_classes=len(shards.classes),
                        frames=shards.manifest.frames,
                        tokens_per_frame=selection.tokens_per_frame,
                        cls_index=selection.cls_index,
                        **config.probe_options,
                    )
            except SweepSpaceError:
                raise
            except ValueError as error:
                raise SweepSpaceError(f"{name}={value}: {error}") from None


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler whose ``after_trial`` does not call ``study.stop()`` on an exhausted grid: that only works
    inside ``study.optimize`` and raises under ask/tell, where the trial budget (capped at the grid size) ends the
    loop instead."""

    def after_trial(self, study: optuna.Study, trial: Any, state: TrialState, values: Any) -> None:
        return None


def make_sampler(name: str, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)  # constant_liar (the default) keeps parallel asks apart
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
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


def _storage(url: str | None, attempts: int = 6) -> optuna.storages.BaseStorage | None:
    if url is None:
        return None
    from sqlalchemy.exc import IntegrityError, OperationalError  # an Optuna dependency

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (IntegrityError, OperationalError):
            # Workers started together on a new database race to create its tables; the loser retries and then
            # finds them made.
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
    return None


def open_study(
    storage: str | None, study_name: str | None, metric: str, sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner, settings: dict[str, Any],
) -> optuna.Study:  # fmt: skip
    direction = METRICS[metric][0]
    if storage is not None and study_name is None:
        raise SweepError("--storage needs --study-name (the name several workers share)")
    study = optuna.create_study(
        storage=_storage(storage), study_name=study_name, direction=direction, sampler=sampler, pruner=pruner,
        load_if_exists=True,
    )  # fmt: skip
    if study.direction.name.lower() != direction:
        raise SweepError(f"study {study_name!r} was created to {study.direction.name.lower()}, --metric {metric} needs "
                         f"to {direction}")  # fmt: skip
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", settings)
    else:  # a study started before a setting existed ran it at its default
        stored = {**stored, "config": with_config_defaults(stored.get("config", {}), skip=LOCAL_FIELDS)}
        differences = [f"{k}: {stored.get(k)!r} in the study, {settings.get(k)!r} here"
                       for k in sorted(set(stored) | set(settings)) if stored.get(k) != settings.get(k)]  # fmt: skip
        if differences:
            raise SweepError(f"study {study_name!r} was started with other settings ({'; '.join(differences)})")
    return study


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
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")


def run_batch(
    study: optuna.Study, trials: Sequence[Trial], configs: Sequence[TrainConfig], data: DataCache, metric: str,
    pruning: bool,
) -> list[TrialState]:  # fmt: skip
    """Train one batch of asked trials (stacked by shape) and tell Optuna each outcome; returns the states."""
    report_key = METRICS[metric][1]

    def on_epoch(index: int, record: dict[str, Any]) -> bool:
        value = _finite(record.get(report_key))
        if value is None:
            return False
        trials[index].report(value, record["epoch"])
        return pruning and trials[index].should_prune()

    told: dict[int, TrialState] = {}
    try:
        results = train_stacked(data.shards, configs, on_epoch=on_epoch, data=data)
        for index, (trial, config, result) in enumerate(zip(trials, configs, results, strict=True)):
            _record_result(trial, config, result, metric)
            failure = result.diverged
            if failure is None and result.metrics is not None and _finite(result.metrics.get(metric)) is None:
                failure = f"{metric} is not a finite number (diverged?)"
            if failure is not None:
                trial.set_user_attr("failure", failure)
                told[index] = TrialState.FAIL
                study.tell(trial, state=TrialState.FAIL)
            elif result.metrics is None:
                told[index] = TrialState.PRUNED
                study.tell(trial, state=TrialState.PRUNED)
            else:
                told[index] = TrialState.COMPLETE
                study.tell(trial, float(result.metrics[metric]))
    finally:  # an error or Ctrl-C: no trial stays RUNNING forever
        for index, trial in enumerate(trials):
            if index not in told:
                study.tell(trial, state=TrialState.FAIL)
    return [told[index] for index in range(len(trials))]


def sweep_settings(probe: str, metric: str, space: SearchSpace, config: TrainConfig, shards: ShardSet) -> dict:
    """What every worker of a study must agree on (execution-only fields may differ)."""
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k not in LOCAL_FIELDS}
    return {
        "probe": probe,
        "metric": metric,
        "space": space.describe(),
        "config": shared,
        "manifest_hash": shards.manifest.content_hash(),
    }


def run_sweep(
    features: str | Path | Sequence[str | Path] | ShardSet,
    probe: str = "step",
    out: str | Path = "sweeps/sweep",
    *,
    space: SearchSpace,
    trials: int = 64,
    parallel: int = 16,
    sampler: str = "tpe",
    pruner: str = "median",
    metric: str = "top1",
    storage: str | None = None,
    study_name: str | None = None,
    retrain: bool = True,
    plots: bool = True,
    **options: Any,
) -> SweepResult:
    """Search ``space`` for ``probe`` on the shards in ``features``; write the results to ``out``.

    ``options`` are ``TrainConfig`` fields shared by every trial (``epochs``, ``batch_size``, ``seed``, ...).
    ``trials`` is the study's total; ``parallel`` trials are asked at a time and trained as stacked batches.
    """
    if metric not in METRICS:
        raise SweepError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if sampler not in SAMPLERS:
        raise SweepError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if trials < 0 or parallel < 1:
        raise SweepError(f"trials must be >= 0 and parallel >= 1, got {trials} and {parallel}")
    base = make_config(probe, options)
    space.check_not_empty()
    if sampler == "grid":
        size = space.grid_size()
        if trials > size:
            log.info("the grid has %d points: running %d trials, not %d", size, size, trials)
            trials = size
    shards = features if isinstance(features, ShardSet) else open_shards(features)
    validate_space(space, probe, options, shards)
    if metric == "pair_accuracy" and not resolve_pairs(shards, base.pairs):
        raise SweepError("--metric pair_accuracy needs mirrored class pairs (--pairs FILE or pairs in the cache)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(
        storage, study_name, metric, make_sampler(sampler, space, base.seed), make_pruner(pruner, base.epochs),
        sweep_settings(probe, metric, space, base, shards),
    )  # fmt: skip
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = DataCache(shards)
    bar = tqdm(total=trials, desc="trials", unit="trial", disable=not base.progress)
    bar.update(min(trials, len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))))
    try:
        while True:
            batch: list[Trial] = []
            for _ in range(min(parallel, trials - len(study.get_trials(deepcopy=False)))):
                trial = study.ask(space.distributions)
                if trial.number >= trials:  # another worker took the last trials meanwhile
                    trial.set_user_attr("surplus", True)
                    study.tell(trial, state=TrialState.FAIL)
                    break
                batch.append(trial)
            if not batch:
                break
            configs = [trial_config(probe, options, {**space.fixed, **trial.params}) for trial in batch]
            states = run_batch(study, batch, configs, data, metric, pruning=pruner != "none")
            write_results(out, study, metric, space)
            bar.update(len(batch))
            bar.set_postfix(best=_best_text(study))
            log.info(
                "trials %d-%d: %d stack(s), %d pruned; best %s %s", batch[0].number, batch[-1].number,
                len(group_by_shape(configs)), states.count(TrialState.PRUNED), metric, _best_text(study),
            )  # fmt: skip
    finally:
        bar.close()
        data.close()  # streaming reader processes
    rows, best = write_results(out, study, metric, space)
    result = SweepResult(out, study, rows, best)
    if best is not None and retrain:
        result.best_run = retrain_best(out, shards, best, base)
        rows, result.best = write_results(out, study, metric, space, best_run=result.best_run)
    if plots and rows:
        try:
            require("matplotlib", "the sweep's plots", extra="sweep")
        except MissingExtraError as error:
            log.warning("no plots: %s", error)
        else:
            from step_cache.sweeps.plots import sweep_figures

            result.figures = sweep_figures(out)
    return result


def _best_text(study: optuna.Study) -> str:
    best = best_trial(study)
    return "n/a" if best is None else f"{best.value:.4f} (#{best.number})"
