"""``train_probe(..., seeds=N)``: one probe configuration trained with N seeds at once, as one stacked batch
(``stacking.stacked_run``: the seeds are members of one vmapped stack), to report its figures as mean ± std.

Seeds ``seed .. seed+N-1`` give each member its own initial weights (and dropout masks); the batches, the augmented
views drawn each epoch and, when the cache has no val split, the held-out validation videos come from ``seed`` for
every member, so the spread measures the probe's sensitivity to its initialisation on fixed data (``vary: init``
in metrics.json; ``--vary data`` is ``training/seed_data.py``). Each member
keeps its own best checkpoint (chosen on val, like a lone run).

Run directory (``runs.py`` plus)::

    config.json                 the run record; data.seeds lists the seeds
    metrics.json                the headline figures (mean over the seeds, std beside, matrices and chance pooled),
                                every split's and every seed's figures (``metrics_file``)
    metrics.jsonl, best.pt      the first seed's (so evaluate, predict and report read it like a one-seed run)
    seeds/seed-<s>/             metrics.json, metrics.jsonl and best.pt of every seed

The whole stack (parameters, optimizer moments, best checkpoints, histories, RNG state) is committed to
``last_state.pt`` as often as a one-seed run commits (``run_commits``: after the first and the last epoch and every
~30 s), so ``--resume`` continues a killed run from its last commit, exactly as a one-seed run does; a finished run
is returned as it is.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from step_cache.cache.shards import CacheInput, as_shards
from step_cache.training import runs
from step_cache.training.config import TrainConfig, full_options, with_schedule
from step_cache.training.epoch_loop import NonFiniteLossError
from step_cache.training.metrics_file import metrics_document
from step_cache.training.progress import RunProgress, batches_per_epoch
from step_cache.training.run_checkpoints import restore_best, save_checkpoint
from step_cache.training.run_commits import CommitClock, append_epoch
from step_cache.training.run_data import data_record
from step_cache.training.run_record import run_record
from step_cache.training.stacking.shared_data import DataCache
from step_cache.training.stacking.stacked_run import MemberResult, StackedRun

log = logging.getLogger(__name__)

SEEDS_DIR, seed_dir = runs.SEEDS_DIR, runs.seed_dir  # where each seed's files go (runs.py)


def train_seeds(
    cache: CacheInput,
    config: TrainConfig,
    out: Path,
    resume: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    started: float | None = None,
    holdout: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train ``config`` with ``config.seeds`` seeds as one stack into ``out``; returns (metrics, first seed's
    epoch records). ``on_epoch`` sees the first seed's epoch records. ``train_probe`` calls this when
    ``seeds > 1``, after refusing an existing run; ``started`` (``time.perf_counter``) dates the command for
    metrics.json's ``wall_time_s``; ``holdout``: the val hold-out rule (None: a resumed run's own, else today's)."""
    shards = as_shards(cache)
    data = DataCache(shards, holdout or runs.resumed_holdout(out, resume))
    try:
        training = data.get(config)
        resolved = with_schedule(
            dataclasses.replace(config, probe_options=full_options(config)), len(training.splits.train)
        )
        seeds = [config.seed + i for i in range(config.seeds)]
        record = run_record(
            resolved,
            {
                **data_record(
                    shards, training.selection, training.splits, training.pairs, config, resolved, training.views
                ),
                "seeds": seeds,
            },
        )
        if resume and (finished := _finished(out, record)) is not None:
            return finished
        state = runs.open_run_dir(out, record, resume)  # checks the settings on --resume; else starts over
        if state is None:
            shutil.rmtree(out / SEEDS_DIR, ignore_errors=True)
        members = [dataclasses.replace(resolved, seed=seed) for seed in seeds]
        stack = StackedRun(training, members)
        if state is not None:
            stack.restore(state)
            log.info("resuming %s after epoch %d of %d", out, stack.start_epoch, resolved.epochs)
        log.info("%s: training %d seeds (%s) as one stack", config.probe, len(seeds), ", ".join(map(str, seeds)))
        # As for one seed (run_commits): after the first and last epoch and every ~30 s; every epoch with on_epoch
        # (a callback that stops the run must find every epoch before it committed).
        clock = CommitClock(0.0 if on_epoch is not None else None)

        def first_seed(member: int, record: dict[str, Any]) -> bool:
            if member == 0 and on_epoch is not None:
                on_epoch(record)
            return False

        def commit(epochs_done: int) -> None:
            _raise_if_diverged(seeds, stack.results, config.lr)  # before a state with a diverged seed is saved
            if not clock.due(epochs_done, resolved.epochs):
                if len(stack.results[0].history) == epochs_done:  # the first seed may have stopped early
                    append_epoch(out, stack.results[0].history[-1])
                return
            # The state file is the commit point, as for one seed; metrics.jsonl (the first seed's) follows.
            runs.save_state(stack.state(epochs_done), out / runs.STATE)
            runs.write_epoch_log(out, stack.results[0].history)
            clock.committed()

        batches = batches_per_epoch(len(training.splits.train), resolved.batch_size)
        label = f"{config.probe} x{len(seeds)} seeds"
        stack.bar = RunProgress(label, resolved.epochs, batches, stack.start_epoch, config.progress)
        try:
            results = stack.run(first_seed, keep_weights=True, after_epoch=commit)
        finally:
            stack.bar.close()
    finally:
        data.close()
    _raise_if_diverged(seeds, results, config.lr)  # every seed diverged in the same epoch: no commit saw it
    stops = [(seed, r.metrics["early_stop"]) for seed, r in zip(seeds, results, strict=True)]
    if any(stop["stopped"] for _, stop in stops):
        trained = ", ".join(f"seed {seed} {stop['epoch']}/{stop['planned_epochs']}" for seed, stop in stops)
        log.info("%s: early stopping (patience %s), epochs trained: %s", config.probe, stops[0][1]["patience"], trained)
    wall = time.perf_counter() - started if started is not None else None
    return _write(out, seeds, results, wall), results[0].history


def _raise_if_diverged(seeds: list[int], results: list[MemberResult], lr: float) -> None:
    """One configuration: a diverged seed fails the run, as a lone run would."""
    for seed, result in zip(seeds, results, strict=True):
        if result.diverged:
            raise NonFiniteLossError.for_seed(seed, result.diverged, lr)


def _finished(out: Path, record: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    metrics = runs.read_final_metrics(out)
    if metrics is None or metrics.get("seeds") != record["data"]["seeds"]:
        return None
    runs.check_same_settings(out, record)
    restore_best(out, None, seed_dir(out, record["data"]["seeds"][0]) / runs.BEST)  # the same bytes as best.pt
    return metrics, runs.read_epoch_log(out)


def _write(out: Path, seeds: list[int], results: list[MemberResult], wall: float | None) -> dict[str, Any]:
    """Every seed's files, then the first seed's as the run's own, then metrics.json (the commit point)."""
    for seed, result in zip(seeds, results, strict=True):
        directory = seed_dir(out, seed)
        directory.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out, directory / runs.BEST, result.weights)
        runs.write_epoch_log(directory, result.history)
        runs.write_json(directory / runs.FINAL_METRICS, metrics_document([seed], [result.metrics]))
    save_checkpoint(out, out / runs.BEST, results[0].weights)
    runs.write_epoch_log(out, results[0].history)
    metrics = metrics_document(seeds, [result.metrics for result in results], wall, vary="init")
    runs.write_json(out / runs.FINAL_METRICS, metrics)
    return metrics
