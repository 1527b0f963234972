"""Training K probe configurations at once: the members of a group share a shape and see the same batches, their
parameters are stacked along a leading K axis and run with one vmapped forward and one backward, and each has
its own optimizer state, learning rate, weight decay, warm-up, gradient clipping, label smoothing and dropout.

A member gets what ``train_probe`` would give its config alone: the same initial weights (``manual_seed(seed)``
before building the probe), the same batches (``batch_plan`` keyed by (seed, epoch)), the same AdamW and
schedule, the same per-epoch validation and best-checkpoint rule, and the same final metrics (order metrics
included) of its best checkpoint. On CPU in float32 and without dropout it matches a lone run to float rounding
(tested). With dropout it cannot match bit for bit: vmap draws every member's masks from one random stream.

A member can be stopped after any epoch (``on_epoch`` returns True: an Optuna pruner said so). It is then
*dropped from the stack* — its parameters, optimizer state and best weights are indexed away — rather than
frozen with lr 0, so the remaining epochs cost only what the surviving members need.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from step_cache.cache.shards import ShardSet, open_shards
from step_cache.probes import build_probe, count_parameters, probe_options
from step_cache.sweeps.members import StackedProbes
from step_cache.sweeps.shared_data import DataCache, TrainingData
from step_cache.sweeps.stacked_adamw import StackedAdamW, total_steps, warmup_steps
from step_cache.training.config import TrainConfig
from step_cache.training.frame_order import frame_order, permute_frames
from step_cache.training.inference import ORDER_METRICS, autocast, split_metrics
from step_cache.training.token_data import batch_plan

log = logging.getLogger(__name__)

# A member's own settings; every other TrainConfig field, and every probe option but dropout, must be shared.
MEMBER_FIELDS = ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "clip_grad")
MEMBER_PROBE_OPTIONS = ("dropout",)
_IGNORED_FIELDS = ("progress",)

MemberCallback = Callable[[int, dict[str, Any]], bool]  # (member index, epoch record) -> stop this member?


@dataclass
class MemberResult:
    config: TrainConfig  # with the probe's full options, as train_probe records them
    history: list[dict[str, Any]] = field(default_factory=list)  # train_probe's metrics.jsonl lines
    metrics: dict[str, Any] | None = None  # train_probe's metrics.json content; None when stopped early
    stopped_after: int | None = None  # the epoch after which on_epoch stopped it
    weights: dict[str, torch.Tensor] | None = None  # best checkpoint (with keep_weights)


def full_options(config: TrainConfig) -> dict[str, Any]:
    return {**probe_options(config.probe), **config.probe_options}


def shape_key(config: TrainConfig) -> tuple:
    """What members of one stack must share: probe, structure, data and schedule length."""
    shared = tuple(
        (f.name, getattr(config, f.name))
        for f in dataclasses.fields(TrainConfig)
        if f.name not in (*MEMBER_FIELDS, "probe_options", *_IGNORED_FIELDS)
    )
    options = tuple(sorted((k, v) for k, v in full_options(config).items() if k not in MEMBER_PROBE_OPTIONS))
    return (*shared, ("probe_options", options))


def group_by_shape(configs: Sequence[TrainConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped by ``shape_key``, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(shape_key(config), []).append(index)
    return list(groups.values())


def member_losses(logits: torch.Tensor, labels: torch.Tensor, smoothing: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each member (K,) from logits (K, B, C), with per-member label smoothing (K,); the formula
    of ``F.cross_entropy(..., label_smoothing=s)``: (1 − s)·NLL + s·mean over classes of −log p."""
    log_p = logits.log_softmax(dim=-1)
    nll = -log_p.gather(-1, labels.expand(logits.shape[0], -1)[..., None]).squeeze(-1).mean(dim=-1)
    uniform = -log_p.mean(dim=-1).mean(dim=-1)
    return (1 - smoothing) * nll + smoothing * uniform


class StackedRun:
    """One group of same-shape configs trained together."""

    def __init__(self, data: TrainingData, configs: Sequence[TrainConfig]) -> None:
        if len({shape_key(c) for c in configs}) != 1:
            raise ValueError("configs of different shapes cannot be stacked; group them with group_by_shape")
        self.data, self.device = data, data.device
        self.configs = [dataclasses.replace(c, probe_options=full_options(c)) for c in configs]
        self.first = first = self.configs[0]
        shards = data.shards
        probes = []
        for config in self.configs:
            torch.manual_seed(config.seed)  # what train_probe does before building its probe
            probes.append(
                build_probe(
                    config.probe,
                    dim=shards.layout.dim,
                    num_classes=len(shards.classes),
                    frames=shards.manifest.frames,
                    tokens_per_frame=data.selection.tokens_per_frame,
                    cls_index=data.selection.cls_index,
                    **config.probe_options,
                ).to(self.device)
            )
        self.parameters = count_parameters(probes[0])
        self.parameters_without_head = count_parameters(probes[0], exclude_head=True)
        self.stack = StackedProbes(probes)
        per_epoch, total = total_steps(first.epochs, len(data.splits.train), first.batch_size)
        self.optimizer = StackedAdamW(
            self.stack.params,
            lr=[c.lr for c in self.configs],
            weight_decay=[c.weight_decay for c in self.configs],
            warmup_steps=[warmup_steps(c.warmup_epochs, per_epoch) for c in self.configs],
            clip_grad=[c.clip_grad for c in self.configs],
            total_steps=total,
        )
        self.smoothing = torch.tensor([c.label_smoothing for c in self.configs], device=self.device)
        self.active = list(range(len(self.configs)))  # stack slot -> index into configs
        self.results = [MemberResult(c) for c in self.configs]
        self.best = [(-math.inf, -math.inf)] * len(self.configs)  # (val top-1, -val loss) as in train_probe
        self.best_epoch = [0] * len(self.configs)
        self.best_params = self.stack.snapshot()
        self.eval_batch_size = first.eval_batch_size or 4 * first.batch_size
        self.train_time = self.data_wait = 0.0
        self.train_clips = 0

    # -- training ----------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of every active member; returns the shared timing and per-slot loss / top-1 / lr."""
        first, members = self.first, self.stack.size
        self.stack.train(True)
        plan = batch_plan(self.data.splits.train, first.batch_size, shuffle=True, seed=first.seed, epoch=epoch)
        loss_sum = torch.zeros(members, device=self.device)
        correct = torch.zeros(members, device=self.device, dtype=torch.long)
        seen, wait, lr = 0, 0.0, [0.0] * members
        bar = tqdm(
            total=len(plan), desc=f"epoch {epoch + 1}/{first.epochs} ({members} probes)", unit="batch",
            leave=False, disable=not first.progress,
        )  # fmt: skip
        start = time.perf_counter()
        batches = iter(self.data.source.batches(plan))
        while True:
            fetch = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - fetch
            if batch is None:
                break
            tokens = batch[0].to(self.device, non_blocking=True).float()
            labels = batch[1].to(self.device, non_blocking=True)
            with autocast(self.device, first.amp):
                logits = self.stack(tokens)
            losses = member_losses(logits.float(), labels, self.smoothing)
            self.stack.zero_grad()
            losses.sum().backward()  # members are independent: each gets the gradient of its own loss
            self.optimizer.clip_gradients(self.stack.params)
            lr = self.optimizer.current_lr()
            self.optimizer.step(self.stack.params)
            loss_sum += losses.detach() * len(labels)
            correct += (logits.detach().argmax(dim=-1) == labels).sum(dim=-1)
            seen += len(labels)
            bar.update()
        bar.close()
        elapsed = time.perf_counter() - start
        self.train_time += elapsed
        self.data_wait += wait
        self.train_clips += seen
        return {
            "train_loss": (loss_sum / seen).tolist(),
            "train_top1": (correct.double() / seen).tolist(),
            "lr": lr,
            "train_s": elapsed,
            "data_wait_s": wait,
            "clips_per_s": seen / elapsed if elapsed > 0 else float("nan"),
        }

    # -- evaluation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def member_logits(self, indices: np.ndarray, order: str = "original") -> np.ndarray:
        """(K, N, C) float32 logits of every active member, frames reordered by ``order``."""
        self.stack.train(False)
        outputs = []
        plan = batch_plan(indices, self.eval_batch_size, shuffle=False)
        for tokens, _, _ in self.data.source.batches(plan):
            tokens = tokens.to(self.device, non_blocking=True).float()
            tokens = permute_frames(tokens, frame_order(order, tokens.shape[1]))
            with autocast(self.device, self.first.amp):
                outputs.append(self.stack(tokens).float().cpu())
        self.stack.train(True)
        return torch.cat(outputs, dim=1).numpy()

    def evaluate(self, indices: np.ndarray, orders: bool) -> list[dict[str, Any]]:
        """``inference.evaluate_clips`` for every active member (per video, order metrics with ``orders``)."""
        shards, pairs = self.data.shards, self.data.pairs
        labels, videos = shards.labels[indices], shards.videos[indices]

        def summaries(order: str) -> list[dict[str, Any]]:
            logits = self.member_logits(indices, order)
            return [split_metrics(member, labels, videos, shards.classes, pairs) for member in logits]

        results = summaries("original")
        if orders:
            for name in ORDER_METRICS:
                for summary, perturbed in zip(results, summaries(name), strict=True):
                    summary[f"{name}_top1"] = perturbed["top1"]
                    if pairs:
                        summary[f"{name}_pair_accuracy"] = perturbed["pair_accuracy"]
        return results

    # -- the loop ----------------------------------------------------------------------------------------
    def run_epoch(self, epoch: int, on_epoch: MemberCallback | None) -> None:
        shared = self.train_epoch(epoch)
        start = time.perf_counter()
        val = self.evaluate(self.data.splits.val, orders=False)
        eval_s = time.perf_counter() - start
        improved, stopped = [], []
        for slot, member in enumerate(self.active):
            record = {
                "epoch": epoch + 1,
                "train_loss": shared["train_loss"][slot],
                "train_top1": shared["train_top1"][slot],
                "lr": shared["lr"][slot],
                "train_s": shared["train_s"],
                "data_wait_s": shared["data_wait_s"],
                "clips_per_s": shared["clips_per_s"],
                "val_loss": val[slot]["loss"],
                "val_top1": val[slot]["top1"],
                "val_top5": val[slot]["top5"],
                "val_mean_class_accuracy": val[slot]["mean_class_accuracy"],
            }
            if self.data.pairs:
                record["val_pair_accuracy"] = val[slot]["pair_accuracy"]
            record["eval_s"] = eval_s
            score = (val[slot]["top1"], -val[slot]["loss"])
            record["best"] = score > self.best[member]
            if record["best"]:
                self.best[member], self.best_epoch[member] = score, epoch + 1
                improved.append(slot)
            self.results[member].history.append(record)
        if improved:
            index = torch.tensor(improved, device=self.device)
            for name, param in self.stack.params.items():
                self.best_params[name][index] = param.detach()[index]
        for slot, member in enumerate(self.active):
            if on_epoch is not None and on_epoch(member, self.results[member].history[-1]):
                self.results[member].stopped_after = epoch + 1
                stopped.append(slot)
        if stopped:
            self.drop(stopped)
        top = max((self.best[m][0] for m in range(len(self.configs))), default=float("nan"))
        log.debug(
            "epoch %d/%d: %d probes trained, best val top-1 so far %.3f%s", epoch + 1, self.first.epochs,
            len(self.active) + len(stopped), top, f", {len(stopped)} stopped early" if stopped else "",
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

    def final_metrics(self, keep_weights: bool) -> None:
        """train_probe's metrics.json for every member still active, from its best checkpoint."""
        if not self.active:
            return
        self.stack.load(self.best_params)
        val = self.evaluate(self.data.splits.val, orders=True)
        test = self.evaluate(self.data.splits.test, orders=True) if len(self.data.splits.test) else None
        shards, pairs = self.data.shards, self.data.pairs
        for slot, member in enumerate(self.active):
            metrics: dict[str, Any] = {
                "probe": self.first.probe,
                "split": "val",
                "unit": "video (clip logits averaged)",
                "best_epoch": self.best_epoch[member],
                "epochs": self.first.epochs,
                "classes": list(shards.classes),
                "pairs": [[shards.classes[a], shards.classes[b]] for a, b in pairs],
                "pair_accuracy": None,
                "reversed_pair_accuracy": None,
                "shuffled_pair_accuracy": None,
            }
            metrics.update(val[slot])
            metrics["parameters"] = self.parameters
            metrics["parameters_without_head"] = self.parameters_without_head
            metrics["train_time_s"] = self.train_time  # of the whole stack
            metrics["train_clips_per_s"] = self.train_clips / self.train_time if self.train_time > 0 else math.nan
            metrics["data_wait_share"] = self.data_wait / self.train_time if self.train_time > 0 else math.nan
            metrics["data_mode"] = self.data.source.mode
            metrics["device"] = str(self.device)
            metrics["stacked_members"] = len(self.configs)
            if test is not None:
                metrics["test"] = test[slot]
            self.results[member].metrics = metrics
            if keep_weights:
                self.results[member].weights = self.stack.member_state_dict(slot)

    def run(self, on_epoch: MemberCallback | None = None, keep_weights: bool = False) -> list[MemberResult]:
        for epoch in range(self.first.epochs):
            self.run_epoch(epoch, on_epoch)
            if not self.active:
                break
        self.final_metrics(keep_weights)
        return self.results


def train_stacked(
    features: str | Path | Sequence[str | Path] | ShardSet,
    configs: Sequence[TrainConfig],
    *,
    on_epoch: MemberCallback | None = None,
    keep_weights: bool = False,
    data: DataCache | None = None,
) -> list[MemberResult]:
    """Train every config in ``configs`` (``train_config.make_config(probe, options)``), stacking those that
    share a shape; results in the order of ``configs``. ``on_epoch(index, record)`` is called for each member
    after each epoch and may return True to stop that member. ``data`` reuses loaded tokens across calls."""
    shards = features if isinstance(features, ShardSet) else open_shards(features)
    data = data or DataCache(shards)
    results: list[MemberResult | None] = [None] * len(configs)
    for group in group_by_shape(configs):
        run = StackedRun(data.get(configs[group[0]]), [configs[i] for i in group])

        def callback(member: int, record: dict[str, Any], group: list[int] = group) -> bool:
            return bool(on_epoch(group[member], record)) if on_epoch is not None else False

        for index, result in zip(group, run.run(callback, keep_weights), strict=True):
            results[index] = result
    return results  # type: ignore[return-value]
