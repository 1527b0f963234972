"""``train_probe``: train one probe on cached tokens, validate every epoch, keep the best checkpoint, resume a
killed run exactly, and write the final metrics (including the frame-order metrics) of the best checkpoint.

The run directory layout is described in ``runs.py``. On CPU a run is fully deterministic for a seed:
batch order and the augmented views drawn (``view_table.py``) are keyed by (seed, epoch), dropout draws from torch's
global generator whose state is checkpointed, and both data paths (in memory, streaming) yield the same batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from step_cache.cache.shards import CacheInput, ShardSet, as_shards
from step_cache.devices import resolve_device
from step_cache.probes import count_parameters
from step_cache.training import runs
from step_cache.training.augment import build_augmentation
from step_cache.training.config import TrainConfig, full_options, make_config, settings, with_schedule
from step_cache.training.data_source import open_token_source
from step_cache.training.early_stopping import describe_stop, early_stop_record, is_finished, should_stop
from step_cache.training.epoch_loop import NonFiniteLossError, train_epoch
from step_cache.training.inference import autocast, evaluate_clips, tf32_matmuls
from step_cache.training.metrics_file import metrics_document
from step_cache.training.optimization import build_optimizer, build_scheduler
from step_cache.training.progress import RunProgress, batches_per_epoch
from step_cache.training.protocol_use import announce, check_single_run
from step_cache.training.records import (
    NO_SCORE,
    TrainingTime,
    epoch_record,
    final_metrics,
    validation_score,
)
from step_cache.training.run_checkpoints import restore_best
from step_cache.training.run_commits import CommitClock, append_epoch, restore_run, run_state, write_derived
from step_cache.training.run_data import build_run_probe, data_record, run_inputs, warn_short_videos
from step_cache.training.run_line import run_line
from step_cache.training.run_lock import hold_run_dir
from step_cache.training.run_record import run_record
from step_cache.training.run_status import mark_failed, refuse_failed_resume, usable_checkpoint
from step_cache.training.schedule import schedule_steps
from step_cache.training.seed_data import train_data_seeds
from step_cache.training.stacking.seeds import train_seeds
from step_cache.training.streaming import eval_batch_size
from step_cache.training.view_table import epoch_plan

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]  # the content of metrics.json (metrics_file: the headline at the top level)
    history: list[dict[str, Any]] = field(default_factory=list)  # the lines of metrics.jsonl

    def summary(self) -> str:
        """The line train-probe prints (``run_line.run_line``)."""
        return run_line(self.metrics, self.run_dir)


class _Run:
    """The state of one training run: model, optimizer, data, history."""

    def __init__(self, shards: ShardSet, config: TrainConfig, run_dir: Path, holdout: str):
        self.run_dir = run_dir
        inputs = run_inputs(shards, config, holdout)  # the set-up --seeds and sweeps share (stacking.shared_data)
        self.shards, self.selection, self.splits = shards, inputs.selection, inputs.splits
        self.pairs, self.device, self.views = inputs.pairs, inputs.device, inputs.views
        self.requested = config  # epochs / batch_size may be None (auto): resolved from the training clips
        self.config = config = with_schedule(config, len(self.splits.train))
        self.augmentation = build_augmentation(
            config.token_drop, config.reverse_pairs, self.pairs, len(shards.classes), self.selection
        )
        torch.manual_seed(config.seed)
        self.model = build_run_probe(config.probe, shards, self.selection, config.probe_options).to(self.device)
        config.probe_options = full_options(config)
        warn_short_videos(shards, self.splits)
        self.history: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.best, self.best_epoch = NO_SCORE, 0  # records.validation_score of the best epoch so far
        self.best_weights: dict[str, torch.Tensor] | None = None  # kept in memory, written at each commit
        self.commits = CommitClock()  # run_commits: after the first and last epoch, and every ~30 s
        self.bar: RunProgress | None = None
        self.training_time = TrainingTime()
        self.source = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def build_optimizer(self) -> None:
        # Built only once the run directory is settled: the first optimizer costs seconds (torch imports dynamo).
        config = self.config
        total, warmup = schedule_steps(config.epochs, len(self.splits.train), config.batch_size, config.warmup_epochs)
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay, config.optimizer)
        self.scheduler = build_scheduler(self.optimizer, total, warmup)

    def data_record(self) -> dict[str, Any]:
        return data_record(
            self.shards, self.selection, self.splits, self.pairs, self.requested, self.config, self.views
        )

    def open_data(self) -> None:
        # the augmented views training may draw are loaded too (in memory: (1 + N) x the training clips' tokens)
        needed = np.concatenate([self.splits.train, self.views.augmented_rows, self.splits.val, self.splits.test])
        self.source = open_token_source(
            self.shards,
            needed,
            self.selection,
            self.shards.labels,
            mode=self.config.data,
            memory_fraction=self.config.memory_fraction,
            workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            progress=self.config.progress,
            device=self.device,
        )
        log.info(
            "%s: %d train / %d val / %d test clips (val: %s), %s data, device %s",
            self.config.probe, len(self.splits.train), len(self.splits.val), len(self.splits.test),
            self.splits.val_source, self.source.mode, self.device,
        )  # fmt: skip

    # -- resume (run_commits: what a commit writes, and when) --------------------------------------------
    def write_derived_files(self) -> None:
        """last.pt, best.pt and metrics.jsonl, from the committed state."""
        write_derived(self.run_dir, self.model, self.best_weights, self.history, self.best_epoch)

    def restore(self, state: dict[str, Any]) -> None:
        restore_run(self, state)
        self.write_derived_files()  # whatever a kill left half-done after the last commit
        log.info("resuming %s after epoch %d of %d", self.run_dir, self.start_epoch, self.config.epochs)

    def commit(self, epochs_done: int) -> None:
        # The state file (with the best weights) is the commit point; last.pt, best.pt and metrics.jsonl are
        # derived from it afterwards, and ``restore`` rewrites them, so a kill between any two writes loses nothing.
        runs.save_state(run_state(self, epochs_done), self.run_dir / runs.STATE)
        self.write_derived_files()
        self.commits.committed()

    # -- one epoch ---------------------------------------------------------------------------------------
    def train_step(self, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, Any]:
        config = self.config
        with autocast(self.device, config.amp):
            logits = self.model(tokens)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = None
        if config.clip_grad > 0:  # the norm also tells epoch_loop when the gradients diverged
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        return loss, logits, lr, norm

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        config = self.config
        self.model.train()
        plan = epoch_plan(self.views, config.batch_size, config.seed, epoch, config.order, self.shards)
        augment = self.augmentation.for_epoch(config.seed, epoch) if self.augmentation else None
        train = train_epoch(
            self.source, plan, self.device, self.train_step, description=f"epoch {epoch + 1}/{config.epochs}",
            progress=config.progress, augment=augment, run_bar=self.bar,
        )  # fmt: skip
        self.training_time.add(train)
        return train

    def evaluate(self, indices: np.ndarray, orders: bool) -> dict[str, Any]:
        names = self.shards.classes
        return evaluate_clips(
            self.model, self.source, indices, self.shards.labels, self.shards.videos, names, self.pairs,
            batch_size=eval_batch_size(self.config.eval_batch_size, self.config.batch_size, self.source.mode),
            device=self.device, amp=self.config.amp, orders=orders,
            view_average=self.config.view_average,
        )  # fmt: skip

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        train = self.train_epoch(epoch)
        start = time.perf_counter()
        if self.config.val == "none":  # no validation: every epoch's weights replace the last (the checkpoint)
            val, score = None, (float(epoch), 0.0)
        else:
            val = self.evaluate(self.splits.val, orders=False)
            score = validation_score(val, self.config.select_metric)
        record = epoch_record(
            epoch + 1, train, val, time.perf_counter() - start, has_pairs=bool(self.pairs), best=score > self.best
        )
        if record["best"]:
            self.best, self.best_epoch = score, epoch + 1
            self.best_weights = runs.weights_of(self.model)
        self.history.append(record)
        # A run about to stop early commits now: its best.pt must be the weights metrics.json reports.
        if self.commits.due(epoch + 1, self.config.epochs) or should_stop(self.config, epoch + 1, self.best_epoch):
            self.commit(epoch + 1)
        else:
            append_epoch(self.run_dir, record)
        log.debug(
            "epoch %d/%d  loss %.4f  train %.3f  val top-1 %s  val loss %s%s",
            epoch + 1, self.config.epochs, record["train_loss"], record["train_top1"], record["val_top1"],
            record["val_loss"], "  (best)" if record["best"] else "",
        )  # fmt: skip
        return record

    # -- final metrics -----------------------------------------------------------------------------------
    def final_metrics(self) -> dict[str, Any]:
        runs.load_weights(self.model, usable_checkpoint(self.run_dir))
        metrics = final_metrics(
            probe=self.config.probe,
            best_epoch=self.best_epoch,
            select_metric=self.config.select_metric,
            epochs=self.config.epochs,
            view_average=self.config.view_average,
            classes=self.shards.classes,
            pairs=self.pairs,
            val=self.evaluate(self.splits.val, orders=True) if self.config.val != "none" else None,
            test=self.evaluate(self.splits.test, orders=True) if len(self.splits.test) else None,
            parameters=count_parameters(self.model),
            parameters_without_head=count_parameters(self.model, exclude_head=True),
            training_time=self.training_time,
            data_mode=self.source.mode,
            device=str(self.device),
            validation=self.splits.val_source,
        )
        metrics["early_stop"] = early_stop_record(self.config, len(self.history), self.best_epoch)
        return metrics


def train_probe(
    cache: CacheInput,
    probe: str | None = None,
    out: str | Path = "runs/probe",
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: EpochCallback | None = None,
    holdout: str | None = None,
    **options: Any,
) -> TrainResult:
    """Train ``probe`` on ``cache`` (one or more cache directories, or an open ``ShardSet``) and write a run
    directory ``out``.

    ``options`` are ``TrainConfig`` fields (``epochs``, ``lr``, ``probe_options={...}``, ...; ``probe`` None:
    "step", or the ``protocol``'s, whose preset fills the fields not given: docs/protocols.md); ``seeds=N`` trains
    N seeds as one stack and reports mean ± std (``training/stacking/seeds.py``). ``resume``
    continues a killed run from its last commit (about every 30 s; the settings must match). ``on_epoch`` is called with
    each epoch's record (the metrics.jsonl line) after it is saved; raising from it stops the run there. The run
    directory has one writer (``run_lock``); a run that diverges is marked failed (``run_status``) before it raises.
    ``holdout``: the val hold-out rule (``splits.HOLDOUT_RULES``); None: a resumed run's own, else ``groups-v2``
    (a sweep's ``best-run/`` passes its study's, so that it holds out what its trials held out).
    """
    if options.get("protocol") is not None:
        check_single_run(options["protocol"], options, settings())  # a grid protocol: one value of each grid field
    config = make_config(probe, options)
    if config.protocol is not None:
        cache = as_shards(cache)
        announce(config.protocol, cache.manifest.extraction)
    started = time.perf_counter()  # metrics.json's wall_time_s: the command's, loading and evaluation included
    # one writer per run directory, before anything in it is read or removed
    with hold_run_dir(out), tf32_matmuls(resolve_device(config.device), config.tf32):
        try:
            return _train(cache, config.probe, config, Path(out), resume, overwrite, on_epoch, started, holdout)
        except (NonFiniteLossError, runs.NonFiniteValueError) as error:
            mark_failed(Path(out), str(error))  # no command may use what the diverged run left
            raise


def _train(
    cache: CacheInput,
    probe: str,
    config: TrainConfig,
    out: Path,
    resume: bool,
    overwrite: bool,
    on_epoch: EpochCallback | None,
    started: float,
    holdout: str | None,
) -> TrainResult:
    runs.refuse_existing_run(Path(out), resume, overwrite)  # before any slow work
    if resume:
        refuse_failed_resume(out)
    if config.seeds > 1:  # --vary data: each seed a run of its own (seed_data.py), else one stack
        if config.vary == "data":
            metrics, history = train_data_seeds(
                cache, config, Path(out), resume, on_epoch, started, train_probe, holdout
            )
        else:
            metrics, history = train_seeds(cache, config, Path(out), resume, on_epoch, started, holdout)
        return TrainResult(Path(out), metrics, history)
    shards = as_shards(cache)
    run = _Run(shards, config, Path(out), holdout or runs.resumed_holdout(Path(out), resume))
    config = run.config  # with the schedule resolved
    state = runs.open_run_dir(run.run_dir, run_record(config, run.data_record()), resume)
    if state is not None:
        final = runs.read_final_metrics(run.run_dir)
        if final is not None and is_finished(config, int(state["epoch"]), int(state["best_epoch"])):
            restore_best(run.run_dir, state.get("best_model"))  # a finished run's deleted best.pt comes back
            return TrainResult(run.run_dir, final, list(state["history"]))
        run.restore(state)
    else:
        run.build_optimizer()
    run.open_data()
    batches = batches_per_epoch(len(run.splits.train), config.batch_size)
    if on_epoch is not None:
        run.commits.every = 0.0  # on_epoch's contract: it sees each epoch after its commit (run_commits)
    run.bar = RunProgress(config.probe, config.epochs, batches, run.start_epoch, config.progress)
    try:
        for epoch in range(run.start_epoch, config.epochs):
            if should_stop(config, epoch, run.best_epoch):  # checked before each epoch: a resumed run too
                log.info("%s: %s", config.probe, describe_stop(config, epoch, run.best_epoch))
                break
            run.bar.start_epoch(epoch)
            record = run.run_epoch(epoch)
            if on_epoch is not None:
                on_epoch(record)
        metrics = run.final_metrics()
    finally:
        run.bar.close()
        run.source.close()  # streaming reader processes
    metrics = metrics_document([config.seed], [metrics], time.perf_counter() - started)
    runs.write_json(run.run_dir / runs.FINAL_METRICS, metrics)
    return TrainResult(run.run_dir, metrics, run.history)
