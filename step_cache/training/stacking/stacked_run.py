"""Training K probe configurations at once: the members of a group share a shape and see the same batches, their
parameters are stacked along a leading K axis and run with one vmapped forward and one backward, and each has
its own optimizer state (AdamW or SGD, ``--optimizer``), learning rate, weight decay, warm-up, gradient clipping,
label smoothing and dropout.

A member gets what ``train_probe`` would give its config alone: the same initial weights (``manual_seed(seed)``
before building the probe), the same batches (``views.epoch_plan``: batch order and augmented views keyed by
(seed, epoch)), the same optimizer and schedule, the same per-epoch validation and best-checkpoint rule, and the same
final metrics (order metrics included) of its best checkpoint. On CPU in float32 and without dropout it matches a
lone run to float rounding (tested). With dropout it cannot match bit for bit: vmap draws every member's masks
from one random stream.
Members of another seed than the first (``train-probe --seeds``) get their own initial weights but the first
member's batches, views and validation split, so their spread measures initialisation (and dropout) alone.

A member can be stopped after any epoch (``on_epoch`` returns True: an Optuna pruner said so; it has no final
metrics then), or stop by itself when its own early-stopping rule says so (``training/early_stopping.py``, on its
own best epoch; it gets its final metrics from its best weights right then, as ``train_probe`` would). Either way
it is *dropped from the stack* — its parameters, optimizer state and best weights are indexed away — rather than
frozen with lr 0, so the remaining epochs cost only what the surviving members need and a stopped member's results
cannot change afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from step_cache.cache.shards import CacheInput, as_shards
from step_cache.training.augment import build_augmentation
from step_cache.training.config import TrainConfig, full_options, with_schedule
from step_cache.training.early_stopping import describe_stop, early_stop_record, should_stop
from step_cache.training.epoch_loop import train_epoch
from step_cache.training.inference import autocast, evaluate_logits, forward_batches, tf32_matmuls
from step_cache.training.progress import RunProgress
from step_cache.training.records import NO_SCORE, TrainingTime, epoch_record, final_metrics, validation_score
from step_cache.training.run_data import warn_short_videos
from step_cache.training.schedule import schedule_steps
from step_cache.training.stacking.adamw import StackedAdamW
from step_cache.training.stacking.grouping import group_by_shape, shape_key, stack_reading
from step_cache.training.stacking.members import StackedProbes
from step_cache.training.stacking.nested import NestedPlan, nested_data, stack_members
from step_cache.training.stacking.resume import restore_stack, stack_state
from step_cache.training.stacking.sgd import StackedSGD
from step_cache.training.stacking.shared_data import DataCache, TrainingData
from step_cache.training.streaming import eval_batch_size
from step_cache.training.view_table import epoch_plan

log = logging.getLogger(__name__)

MemberCallback = Callable[[int, dict[str, Any]], bool]  # (member index, epoch record) -> stop this member?


@dataclass
class MemberResult:
    config: TrainConfig  # with the probe's full options, as train_probe records them
    history: list[dict[str, Any]] = field(default_factory=list)  # train_probe's metrics.jsonl lines
    metrics: dict[str, Any] | None = None  # train_probe's metrics.json content; None when pruned or diverged
    stopped_after: int | None = None  # the epoch after which on_epoch or early stopping stopped it
    weights: dict[str, torch.Tensor] | None = None  # best checkpoint (with keep_weights)
    diverged: str | None = None  # why training stopped when the loss became non-finite (then metrics is None)


def member_losses(logits: torch.Tensor, labels: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each member (K,) from logits (K, B, C), with per-member label smoothing (K,); the formula
    of ``F.cross_entropy(..., label_smoothing=s)``: (1 − s)·NLL + s·mean over classes of −log p."""
    log_p = logits.log_softmax(dim=-1)
    nll = -log_p.gather(-1, labels.expand(logits.shape[0], -1)[..., None]).squeeze(-1).mean(dim=-1)
    uniform = -log_p.mean(dim=-1).mean(dim=-1)
    return (1 - smoothing) * nll + smoothing * uniform


class StackedRun:
    """One group of same-shape configs trained together (``picks``: how members read, ``grouping.stack_reading``)."""

    def __init__(
        self, data: TrainingData, configs: Sequence[TrainConfig], picks: Sequence[int] | NestedPlan | None = None
    ) -> None:
        if len({shape_key(c) for c in configs}) != 1:
            raise ValueError("configs of different shapes cannot be stacked; group them with group_by_shape")
        self.data, self.device = data, data.device
        train_clips = len(data.splits.train)
        self.configs = [
            with_schedule(dataclasses.replace(c, probe_options=full_options(c)), train_clips) for c in configs
        ]
        self.first = first = self.configs[0]
        shards = data.shards
        self.augmentation = build_augmentation(  # shared, like the batches: drawn from the first member's seed
            first.token_drop, first.reverse_pairs, data.pairs, len(shards.classes), data.selection
        )
        # each member's probe, seeded as train_probe seeds it, and its parameter counts (nested: its own width)
        self.stack, self.parameters, self.parameters_without_head = stack_members(self.configs, data, picks)
        warn_short_videos(shards, data.splits)
        # The same schedule lengths as train_probe's: shared total (same epochs and batches), own warm-up.
        steps = [schedule_steps(c.epochs, len(data.splits.train), c.batch_size, c.warmup_epochs) for c in self.configs]
        optimizer = StackedSGD if first.optimizer == "sgd" else StackedAdamW  # shared: grouping.shape_key
        self.optimizer = optimizer(
            self.stack.params,
            lr=[c.lr for c in self.configs],
            weight_decay=[c.weight_decay for c in self.configs],
            warmup_steps=[warmup for _, warmup in steps],
            clip_grad=[c.clip_grad for c in self.configs],
            total_steps=steps[0][0],
        )
        self.smoothing = torch.tensor([c.label_smoothing for c in self.configs], device=self.device)
        self.active = list(range(len(self.configs)))  # stack slot -> index into configs
        self.results = [MemberResult(c) for c in self.configs]
        self.best = [NO_SCORE] * len(self.configs)  # records.validation_score of each member's best epoch
        self.best_epoch = [0] * len(self.configs)
        self.best_params = self.stack.snapshot()
        self.eval_batch_size = eval_batch_size(first.eval_batch_size, first.batch_size, data.source.mode)
        self.training_time = TrainingTime()  # of the whole stack
        self.start_epoch = 0  # > 0 after restore()
        self.bar: RunProgress | None = None  # train-probe --seeds: one bar for the whole run (training.progress)
        self.keep_weights = False  # results keep their best weights (set by run())

    # -- training ----------------------------------------------------------------------------------------
    def train_step(
        self, tokens: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[float], Any]:
        with autocast(self.device, self.first.amp):
            logits = self.stack(tokens)
        losses = member_losses(logits.float(), labels, self.smoothing)
        self.stack.zero_grad()
        losses.sum().backward()  # members are independent: each gets the gradient of its own loss
        norms = self.optimizer.clip_gradients(self.stack.params)
        lr = self.optimizer.current_lr()
        self.optimizer.step(self.stack.params)
        return losses, logits, lr, norms

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of every active member: the shared timing and per-slot loss / top-1 / lr."""
        first, members = self.first, self.stack.size
        self.stack.train(True)
        plan = epoch_plan(self.data.views, first.batch_size, first.seed, epoch, first.order, self.data.shards)
        augment = self.augmentation.for_epoch(first.seed, epoch) if self.augmentation else None
        train = train_epoch(
            self.data.source, plan, self.device, self.train_step, members=(members,),
            description=f"epoch {epoch + 1}/{first.epochs} ({members} probes)", progress=first.progress,
            augment=augment, run_bar=self.bar,
        )  # fmt: skip
        self.training_time.add(train)
        return train

    # -- evaluation --------------------------------------------------------------------------------------
    def member_logits(
        self, indices: np.ndarray, order: str = "original", stack: StackedProbes | None = None
    ) -> np.ndarray:
        """(K, N, C) float32 logits of every member of ``stack`` (default: the active ones), frames reordered by
        ``order``."""
        stack = stack or self.stack
        stack.train(False)
        outputs = forward_batches(
            stack, self.data.source, indices, batch_size=self.eval_batch_size, device=self.device,
            amp=self.first.amp, order=order,
        )  # fmt: skip
        stack.train(True)
        return torch.cat(outputs, dim=1).numpy()

    def evaluate(self, indices: np.ndarray, orders: bool, stack: StackedProbes | None = None) -> list[dict[str, Any]]:
        """``inference.evaluate_clips`` for every member of ``stack`` (default: the active ones; per video, order
        metrics with ``orders``)."""
        shards = self.data.shards
        return evaluate_logits(
            lambda order: self.member_logits(indices, order, stack), shards.labels[indices], shards.videos[indices],
            shards.classes, self.data.pairs, orders=orders, view_average=self.first.view_average,
        )  # fmt: skip

    # -- the loop ----------------------------------------------------------------------------------------
    def run_epoch(self, epoch: int, on_epoch: MemberCallback | None) -> None:
        shared = self.train_epoch(epoch)
        start = time.perf_counter()
        validating = self.first.val != "none"  # --val none: every epoch's weights are the checkpoint (the last)
        val = self.evaluate(self.data.splits.val, orders=False) if validating else [None] * len(self.active)
        eval_s = time.perf_counter() - start
        improved, stopped = [], []
        diverged = [slot for slot, finite in enumerate(shared["finite"]) if not finite]
        for slot in diverged:
            # Its weights are NaN now: no record, no checkpoint; it leaves the stack (metrics stay None).
            member = self.active[slot]
            self.results[member].stopped_after = epoch
            self.results[member].diverged = f"loss became non-finite in epoch {epoch + 1} (lr too high?)"
            config = self.configs[member]
            log.warning(
                "member %d (lr %g, seed %d) diverged in epoch %d and was dropped", member, config.lr, config.seed,
                epoch + 1,
            )  # fmt: skip
        for slot, member in enumerate(self.active):
            if slot in diverged:
                continue
            train = {**shared, **{key: shared[key][slot] for key in ("train_loss", "train_top1", "lr")}}
            score = validation_score(val[slot], self.configs[member].select_metric) if validating else (epoch, 0.0)
            record = epoch_record(
                epoch + 1, train, val[slot], eval_s, has_pairs=bool(self.data.pairs), best=score > self.best[member]
            )
            if record["best"]:
                self.best[member], self.best_epoch[member] = score, epoch + 1
                improved.append(slot)
            self.results[member].history.append(record)
        if improved:
            index = torch.tensor(improved, device=self.device)
            for name, param in self.stack.params.items():
                self.best_params[name][index] = param.detach()[index]
        for slot, member in enumerate(self.active):
            if slot in diverged:
                continue
            if on_epoch is not None and on_epoch(member, self.results[member].history[-1]):
                self.results[member].stopped_after = epoch + 1
                stopped.append(slot)
        finished = [slot for slot, member in enumerate(self.active) if slot not in stopped + diverged
                    and should_stop(self.configs[member], epoch + 1, self.best_epoch[member])]  # fmt: skip
        if finished:
            self.finish(finished)
        for slot in finished:
            member = self.active[slot]
            self.results[member].stopped_after = epoch + 1
            config = self.configs[member]  # debug: a sweep batch would print one line per trial
            log.debug("member %d (seed %d, lr %g): %s", member, config.seed, config.lr,
                      describe_stop(config, epoch + 1, self.best_epoch[member]))  # fmt: skip
        trained = len(self.active)  # before this epoch's drops
        if stopped or diverged or finished:
            self.drop(sorted(stopped + diverged + finished))
        top = max((self.best[m][0] for m in range(len(self.configs))), default=float("nan"))
        log.debug(
            "epoch %d/%d: %d probes trained, best validation score so far %.3f%s", epoch + 1, self.first.epochs,
            trained, top, "".join(f", {n} {what}" for n, what in ((len(stopped), "pruned"),
                                                                  (len(finished), "stopped early")) if n),
        )  # fmt: skip

    def drop(self, slots: list[int]) -> None:
        keep = [slot for slot in range(len(self.active)) if slot not in slots]
        self.active = [self.active[slot] for slot in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        self.stack.keep(index)
        self.optimizer.keep(index)
        self.best_params = {name: value[index] for name, value in self.best_params.items()}
        self.smoothing = self.smoothing[index]

    def finish(self, slots: list[int]) -> None:
        """train_probe's metrics.json (and, with ``keep_weights``, the best weights) of the active members at
        ``slots``, from their best checkpoints; the stack's own parameters are left as they are."""
        index = torch.tensor(slots, device=self.device)
        best = self.stack.subset(index, {name: value[index] for name, value in self.best_params.items()})
        validating = self.first.val != "none"
        val = self.evaluate(self.data.splits.val, orders=True, stack=best) if validating else [None] * len(slots)
        test = self.evaluate(self.data.splits.test, orders=True, stack=best) if len(self.data.splits.test) else None
        shards = self.data.shards
        for position, slot in enumerate(slots):
            member = self.active[slot]
            metrics = final_metrics(
                probe=self.first.probe,
                best_epoch=self.best_epoch[member],
                select_metric=self.configs[member].select_metric,
                epochs=self.first.epochs,
                view_average=self.first.view_average,
                classes=shards.classes,
                pairs=self.data.pairs,
                val=val[position],
                test=test[position] if test is not None else None,
                parameters=self.parameters[member],
                parameters_without_head=self.parameters_without_head[member],
                training_time=self.training_time,
                data_mode=self.data.source.mode,
                device=str(self.device),
                validation=self.data.splits.val_source,
            )
            metrics["stacked_members"] = len(self.configs)
            config, done = self.configs[member], len(self.results[member].history)
            metrics["early_stop"] = early_stop_record(config, done, self.best_epoch[member])
            self.results[member].metrics = metrics
            if self.keep_weights:
                self.results[member].weights = best.member_state_dict(position)

    def run(
        self,
        on_epoch: MemberCallback | None = None,
        keep_weights: bool = False,
        after_epoch: Callable[[int], None] | None = None,
    ) -> list[MemberResult]:
        """Train the remaining epochs (all, or those after a ``restore``), then the final metrics.
        ``after_epoch(epochs_done)`` runs after each epoch (``train-probe --seeds`` saves ``state()`` there)."""
        self.keep_weights = keep_weights
        for epoch in range(self.start_epoch, self.first.epochs):
            if not self.active:  # restored after every member had stopped
                break
            if self.bar is not None:
                self.bar.start_epoch(epoch)
            self.run_epoch(epoch, on_epoch)
            if not self.active:
                break
            if after_epoch is not None:
                after_epoch(epoch + 1)
        if self.active:
            self.finish(list(range(len(self.active))))
        return self.results

    # -- resume (stacking.resume) ---------------------------------------------------------------------------
    def state(self, epochs_done: int) -> dict[str, Any]:
        """Everything ``restore`` needs to continue exactly after ``epochs_done`` epochs (``resume.stack_state``)."""
        return stack_state(self, epochs_done)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a ``state()`` (``resume.restore_stack``)."""
        restore_stack(self, state)


def train_stacked(
    cache: CacheInput,
    configs: Sequence[TrainConfig],
    *,
    on_epoch: MemberCallback | None = None,
    keep_weights: bool = False,
    data: DataCache | None = None,
) -> list[MemberResult]:
    """Train every config in ``configs`` (``train_config.make_config(probe, options)``), stacking those that
    share a shape; results in the order of ``configs``. ``on_epoch(index, record)`` is called for each member
    after each epoch and may return True to stop that member. ``data`` reuses loaded tokens across calls."""
    shards = as_shards(cache)
    own_data = data is None
    data = data or DataCache(shards)
    results: list[MemberResult | None] = [None] * len(configs)
    try:
        for group in group_by_shape(configs):
            members = [configs[i] for i in group]
            reading, picks = stack_reading(members, shards.layout)  # one layer each: their union, read once
            inputs = nested_data(data, picks) if isinstance(picks, NestedPlan) else data.get(reading)
            run = StackedRun(inputs, members, picks)

            def callback(member: int, record: dict[str, Any], group: list[int] = group) -> bool:
                return bool(on_epoch(group[member], record)) if on_epoch is not None else False

            with tf32_matmuls(run.device, configs[group[0]].tf32):
                for index, result in zip(group, run.run(callback, keep_weights), strict=True):
                    results[index] = result
    finally:
        if own_data:
            data.close()
    return results  # type: ignore[return-value]
