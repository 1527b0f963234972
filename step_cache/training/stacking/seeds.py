"""``train_probe(..., seeds=N)``: one probe configuration trained with N seeds at once, as one stacked batch
(``stacking.stacked_run``: the seeds are members of one vmapped stack), to report its figures as mean ± std.

Seeds ``seed .. seed+N-1`` give each member its own initial weights (and dropout masks); the batches, the augmented
views drawn each epoch and, when the cache has no val split, the held-out validation videos come from ``seed`` for
every member, so the spread measures the probe's sensitivity to its initialisation on fixed data. Each member
keeps its own best checkpoint (chosen on val, like a lone run).

Run directory (``runs.py`` plus)::

    config.json                 the run record; data.seeds lists the seeds
    metrics.json                the first seed's metrics, plus seeds, per_seed, mean and std (test under "test")
                                and chance pooled over the seeds
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from step_cache.cache.shards import CacheInput, as_shards
from step_cache.training import runs
from step_cache.training.config import TrainConfig, full_options, with_schedule
from step_cache.training.epoch_loop import NonFiniteLossError
from step_cache.training.progress import RunProgress, batches_per_epoch
from step_cache.training.records import seed_statistics, seeds_chance
from step_cache.training.run_checkpoints import restore_best, save_checkpoint
from step_cache.training.run_commits import CommitClock, append_epoch
from step_cache.training.run_data import data_record
from step_cache.training.run_record import run_record
from step_cache.training.stacking.shared_data import DataCache
from step_cache.training.stacking.stacked_run import MemberResult, StackedRun

log = logging.getLogger(__name__)

SEEDS_DIR = "seeds"
# What each seed's metrics.json summarises in per_seed (the rest is the same for every seed).
PER_SEED_KEYS = ("best_epoch", "top1", "top5", "mean_class_accuracy", "pair_accuracy", "reversed_top1",
                 "reversed_pair_accuracy", "shuffled_top1", "shuffled_pair_accuracy", "loss", "early_stop")  # fmt: skip


def seed_dir(run_dir: Path, seed: int) -> Path:
    return run_dir / SEEDS_DIR / f"seed-{seed}"


def train_seeds(
    cache: CacheInput,
    config: TrainConfig,
    out: Path,
    resume: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train ``config`` with ``config.seeds`` seeds as one stack into ``out``; returns (metrics, first seed's
    epoch records). ``on_epoch`` sees the first seed's epoch records. ``train_probe`` calls this when
    ``seeds > 1``, after refusing an existing run."""
    shards = as_shards(cache)
    data = DataCache(shards)
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
    return _write(out, seeds, results), results[0].history


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


def _write(out: Path, seeds: list[int], results: list[MemberResult]) -> dict[str, Any]:
    """Every seed's files, then the first seed's as the run's own, then metrics.json (the commit point)."""
    for seed, result in zip(seeds, results, strict=True):
        directory = seed_dir(out, seed)
        directory.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out, directory / runs.BEST, result.weights)
        runs.write_epoch_log(directory, result.history)
        runs.write_json(directory / runs.FINAL_METRICS, {**result.metrics, "seed": seed})
    save_checkpoint(out, out / runs.BEST, results[0].weights)
    runs.write_epoch_log(out, results[0].history)
    per_seed = [result.metrics for result in results]
    mean, std = seed_statistics(per_seed)
    # The stack trains until its last seed stops: that seed's clock is the run's cost (the first seed may have
    # stopped early, with the stack's time at that moment).
    last = max(per_seed, key=lambda m: m.get("train_time_s") or 0.0)
    metrics = {
        **per_seed[0],
        **{key: last.get(key) for key in ("train_time_s", "train_clips_per_s", "data_wait_share")},
        "seeds": seeds,
        "per_seed": [_seed_summary(seed, m) for seed, m in zip(seeds, per_seed, strict=True)],
        "mean": mean,
        "std": std,
        "chance": seeds_chance(per_seed),  # pooled over the seeds (each seed's own is in seeds/seed-<s>/)
    }
    runs.write_json(out / runs.FINAL_METRICS, metrics)
    return metrics


def _seed_summary(seed: int, metrics: dict[str, Any]) -> dict[str, Any]:
    summary = {"seed": seed, **{key: metrics.get(key) for key in PER_SEED_KEYS}}
    if metrics.get("test"):
        summary["test"] = {key: metrics["test"].get(key) for key in PER_SEED_KEYS if key in metrics["test"]}
    return summary
