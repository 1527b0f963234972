"""``run_sweep``: Optuna drives the search, asking ``parallel`` trials at a time and training them as stacked
batches (``stacked.train_stacked``), reporting each member's per-epoch validation metric to the pruner and
telling the outcome (COMPLETE with the objective, or PRUNED).

The study is kept in ``OUT/study.journal`` by default, so re-running the same command resumes it (``OUT`` has one
writer at a time: ``OUT/.lock``); with an RDB URL (``sqlite:///sweep.db``, ``postgresql+psycopg://...``) and a
study name several processes or machines work on one study. ``trials`` is the study's total of trials with an
outcome (``storage.has_outcome``); each worker asks while fewer are claimed, and a trial asked past the budget in
a race is told FAIL without running (marked ``surplus``). Trials of a dead worker are re-queued
(``storage.requeue_stale``). The first worker records the sweep's settings in the study; a worker (or a resumed
run) with other settings is refused."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import Trial, TrialState
from tqdm import tqdm

from step_cache.cache.locking import DirectoryLock
from step_cache.cache.shards import ShardSet, open_shards
from step_cache.extras import MissingExtraError, require
from step_cache.interface import from_command_line, option
from step_cache.probes import build_probe
from step_cache.sweeps.batch import run_batch, worker_name
from step_cache.sweeps.distinct import ask_distinct, exhausted, space_size
from step_cache.sweeps.results import (
    best_trial,
    check_out_first,
    check_resume,
    objective_text,
    retrain_best,
    retrained,
    write_results,
)
from step_cache.sweeps.search import METRICS, SAMPLERS, SweepError, make_pruner, make_sampler
from step_cache.sweeps.space import SearchSpace, SweepSpaceError, probe_option_names
from step_cache.sweeps.storage import (
    DEFAULT_STUDY,
    SweepStorage,
    counts,
    drop_leftovers,
    is_surplus,
    open_storage,
    requeue_stale,
)  # fmt: skip
from step_cache.training.config import LOCAL_FIELDS, TrainConfig, make_config
from step_cache.training.protocol_use import announce
from step_cache.training.run_data import probe_shape, resolve_pairs, token_subset
from step_cache.training.run_record import recorded_holdout, with_config_defaults
from step_cache.training.splits import HOLDOUT_GROUPS
from step_cache.training.stacking.grouping import group_by_shape
from step_cache.training.stacking.shared_data import DataCache
from step_cache.training.token_data import select_tokens
from step_cache.training.trainer import TrainResult

log = logging.getLogger(__name__)


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
                selection = select_tokens(shards.layout, token_subset(config, shards), config.layers)
                with torch.device("meta"):
                    build_probe(probe, **probe_shape(shards, selection), **config.probe_options)
            except SweepSpaceError:
                raise
            except ValueError as error:
                raise SweepSpaceError(f"{name}={value}: {error}") from None


def open_study(
    store: SweepStorage, study_name: str, metric: str, sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner, settings: dict[str, Any],
) -> optuna.Study:  # fmt: skip
    direction = METRICS[metric][0]
    study = optuna.create_study(
        storage=store.storage, study_name=study_name, direction=direction, sampler=sampler, pruner=pruner,
        load_if_exists=True,
    )  # fmt: skip
    if study.direction.name.lower() != direction:
        raise SweepError(f"study {study_name!r} was created to {study.direction.name.lower()}, "
                         f"{option('metric', metric)} needs to {direction}")  # fmt: skip
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", settings)
    else:  # a study started before a setting existed ran it at its default, and keeps its val hold-out rule
        settings = {**settings, "holdout": study_holdout(stored, study_name)}
        stored = {**stored, "config": with_config_defaults(stored.get("config", {}), skip=LOCAL_FIELDS)}
        stored["holdout"] = settings["holdout"]
        flat_stored, flat_settings = _flat(stored), _flat(settings)
        differences = [f"{k}: {flat_stored.get(k)!r} in the study, {flat_settings.get(k)!r} here"
                       for k in sorted(set(flat_stored) | set(flat_settings))
                       if flat_stored.get(k) != flat_settings.get(k)]  # fmt: skip
        if differences:
            where = "" if store.shared else f" (use the same options to resume it, or another {option('out')})"
            raise SweepError(f"study {study_name!r} was started with other settings ({'; '.join(differences)}){where}")
    return study


def study_holdout(stored: dict[str, Any], study_name: str) -> str:
    """The val hold-out rule of a study's trials (its ``holdout``); a study started before the rule was recorded
    keeps the one its first trials used (``run_record.recorded_holdout``: per-file before groups)."""
    record = {"config": stored.get("config", {}), "data": {"holdout": stored.get("holdout")}}
    return recorded_holdout(record, f"study {study_name!r}")


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings with the training config's fields as ``config.NAME`` (a difference names the field)."""
    flat = {k: v for k, v in settings.items() if k != "config"}
    flat.update({f"config.{k}": v for k, v in (settings.get("config") or {}).items()})
    return flat


def sweep_settings(probe: str, metric: str, space: SearchSpace, config: TrainConfig, shards: ShardSet) -> dict:
    """What every worker of a study must agree on (execution-only fields may differ)."""
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k not in LOCAL_FIELDS}
    return {
        "probe": probe,
        "metric": metric,
        "space": space.describe(),
        "config": shared,
        "manifest_hash": shards.manifest.content_hash(),
        "holdout": HOLDOUT_GROUPS,  # the val hold-out rule of every trial (splits.HOLDOUT_RULES)
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
    heartbeat: int = 60,
    retrain: bool = True,
    plots: bool = True,
    **options: Any,
) -> SweepResult:
    """Search ``space`` for ``probe`` on the shards in ``features``; write the results to ``out``.

    ``options`` are ``TrainConfig`` fields shared by every trial (``epochs``, ``batch_size``, ``seed``, ...).
    ``trials`` is the study's total; ``parallel`` trials are asked at a time and trained as stacked batches.
    The study is ``out/study.journal`` unless ``storage`` (an RDB URL) is given; re-running resumes it.
    ``heartbeat``: seconds between the heartbeats of a trial in an RDB study (dead after 3 missed).
    """
    if metric not in METRICS:
        raise SweepError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if sampler not in SAMPLERS:
        raise SweepError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if trials < 0 or parallel < 1:
        raise SweepError(f"trials must be >= 0 and parallel >= 1, got {trials} and {parallel}")
    base = make_config(probe, options)
    if base.val == "none":
        train = "train-probe" if from_command_line() else "train_probe"
        hint = (
            f": {option('protocol', base.protocol)} has no grid; use {train} {option('protocol', base.protocol)}"
            if base.protocol
            else ""
        )
        raise SweepError(f"a sweep ranks its trials on the val split: {option('val', 'none')} has none{hint}")
    space.check_not_empty()
    if sampler == "grid":
        size = space.grid_size()
        if trials > size:
            log.info("the grid has %d points: running %d trials, not %d", size, size, trials)
            trials = size
    shards = features if isinstance(features, ShardSet) else open_shards(features)
    if base.protocol is not None:
        announce(base.protocol, shards.manifest.extraction)
    validate_space(space, probe, options, shards)
    if metric == "pair_accuracy" and not resolve_pairs(shards, base.pairs):
        raise SweepError(
            f"{option('metric', 'pair_accuracy')} needs mirrored class pairs ({option('pairs', 'FILE')} or pairs in "
            "the cache)"
        )
    if storage is not None and study_name is None:
        raise SweepError(f"{option('storage')} needs {option('study_name')} (the name several workers share)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(out)
    with DirectoryLock(out, writer="sweep") as lock:  # one writer per OUT: its journal, its tables, its best-run
        if lock.replaced_stale:
            log.info("%s: taking over from pid %s, which stopped while sweeping", out, lock.replaced_stale.get("pid"))
        check_out_first(out, shared=storage is not None)  # before open_storage creates OUT/study.journal
        store = open_storage(storage, out, heartbeat)
        study = open_study(
            store, study_name or DEFAULT_STUDY, metric, make_sampler(sampler, space, base.seed),
            make_pruner(pruner, base.epochs), sweep_settings(probe, metric, space, base, shards),
        )  # fmt: skip
        requeue_stale(study, store)
        done = check_resume(out, store, study, trials)
        holdout = study_holdout(study.user_attrs["sweep"], study.study_name)  # its trials' and best-run/'s
        data = DataCache(shards, holdout)
        bar = tqdm(total=trials, desc="trials", unit="trial", disable=not base.progress, initial=min(done, trials))
        try:
            _optimize(study, store, out, space, probe, options, data, bar, trials=trials, parallel=parallel,
                      metric=metric, pruning=pruner != "none", seed=base.seed)  # fmt: skip
        finally:
            bar.close()
            data.close()  # streaming reader processes
        rows, best = write_results(out, study, metric, space, storage=store.label)
        result = SweepResult(out, study, rows, best)
        if best is not None and retrain and retrained(out, best) is None:  # not yet, or for another best trial
            result.best_run = retrain_best(out, shards, best, base, holdout)
            rows, result.best = write_results(out, study, metric, space, storage=store.label,
                                              best_run=result.best_run)  # fmt: skip
        if plots and rows:
            try:
                require("matplotlib", "the sweep's plots", extra="sweep")
            except MissingExtraError as error:
                log.warning("no plots: %s", error)
            else:
                from step_cache.sweeps.plots import sweep_figures

                result.figures = sweep_figures(out)
    return result


def _optimize(
    study: optuna.Study, store: SweepStorage, out: Path, space: SearchSpace, probe: str, options: dict[str, Any],
    data: DataCache, bar: tqdm, *, trials: int, parallel: int, metric: str, pruning: bool, seed: int,
) -> None:  # fmt: skip
    """Ask, train and tell batches until ``trials`` trials have an outcome or the space is exhausted, never asking a
    configuration another trial holds (``distinct``). A worker of a shared study with nothing left to ask waits
    while other workers' trials run, so it takes over any whose worker dies."""
    waiting_said = exhausted_said = False
    size = space_size(space.distributions)
    while True:
        done, running = counts(study)
        batch: list[Trial] = []
        for _ in range(min(parallel, trials - done - running)):
            trial = None if exhausted(study, size) else ask_distinct(study, space.distributions, size, seed)
            if trial is None:  # every configuration of the space has a trial
                if not exhausted_said:
                    log.info("the search space has %d configurations and every one now has a trial: no more to "
                             "ask; the sweep ends with these %d trials (%d asked for)", size, size, trials)  # fmt: skip
                    exhausted_said = True
                break
            if is_surplus(study, trial, trials):  # another worker took the last trials meanwhile
                trial.set_user_attr("surplus", True)
                study.tell(trial, state=TrialState.FAIL)
                break
            trial.set_user_attr("worker", worker_name())  # who runs it: trials.json shows it while RUNNING
            batch.append(trial)
        if not batch:
            done, running = counts(study)
            if done >= trials or not store.shared or (exhausted_said and not running):  # (the journal's only
                # worker has nothing RUNNING elsewhere)
                drop_leftovers(study)
                return
            if running and not waiting_said:
                log.info("waiting for %d trial(s) running on other workers (re-queued here if their worker dies)",
                         running)  # fmt: skip
                waiting_said = True
            time.sleep(min(store.heartbeat or 1, 5))  # also when a race left only queued trials: ask again
            requeue_stale(study, store)
            continue
        configs = [trial_config(probe, {**options, "progress": False}, {**space.fixed, **t.params}) for t in batch]
        with store.beats(trial._trial_id for trial in batch):
            states = run_batch(study, batch, configs, data, metric, pruning=pruning, exclusive=not store.shared)
        write_results(out, study, metric, space, storage=store.label)
        bar.update(sum(state is not None for state in states))
        bar.set_postfix(best=_best_text(study, metric))
        log.info(
            "trials %d-%d: %d stack(s), %d pruned; best %s", batch[0].number, batch[-1].number,
            len(group_by_shape(configs)), states.count(TrialState.PRUNED), _best_text(study, metric),
        )  # fmt: skip


def _best_text(study: optuna.Study, metric: str) -> str:
    best = best_trial(study)
    return "n/a" if best is None else f"{objective_text(metric, best.value)} (#{best.number})"
