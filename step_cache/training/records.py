"""What a training run records, the same for ``train_probe`` and for every member of a stacked sweep: the
per-epoch line of ``metrics.jsonl``, the best-checkpoint rule, the training time, and ``metrics.json`` (the final
metrics of the best checkpoint)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from step_cache.training.chance import chance_of
from step_cache.training.metrics import UNITS

NO_SCORE = (-math.inf, -math.inf)  # below every validation score
# ``--select-metric`` (TrainConfig.select_metric) -> the validation metric that picks the best checkpoint.
SELECT_METRICS = {"top1": "top1", "mean-class": "mean_class_accuracy", "pair": "pair_accuracy"}
SELECT_LABELS = {"top1": "val top-1", "mean-class": "val mean class accuracy", "pair": "val pair accuracy"}


def validation_score(val: dict[str, Any], select_metric: str = "top1") -> tuple[float, float]:
    """The best-checkpoint rule (early stopping follows it too): an epoch is better when this is greater —
    a higher validation ``select_metric`` (a ``SELECT_METRICS`` name: top-1 by default, mean class accuracy or
    pair accuracy), ties broken by the lower val loss."""
    return (val[SELECT_METRICS[select_metric]], -val["loss"])


def epoch_record(
    epoch: int, train: dict[str, Any], val: dict[str, Any] | None, eval_s: float, *, has_pairs: bool, best: bool
) -> dict[str, Any]:
    """The ``metrics.jsonl`` line of (1-based) ``epoch`` from its training summary (``epoch_loop.train_epoch``,
    one member's values) and its validation metrics (None without validation, ``--val none``: the val fields are
    null)."""
    val = val or dict.fromkeys(("loss", "top1", "top5", "mean_class_accuracy", "pair_accuracy"))
    record = {
        "epoch": epoch,
        **{key: train[key] for key in ("train_loss", "train_top1", "lr", "train_s", "data_wait_s", "clips_per_s")},
        "val_loss": val["loss"],
        "val_top1": val["top1"],
        "val_top5": val["top5"],
        "val_mean_class_accuracy": val["mean_class_accuracy"],
    }
    if has_pairs:
        record["val_pair_accuracy"] = val["pair_accuracy"]
    record["eval_s"] = eval_s
    record["best"] = best
    return record


@dataclass
class TrainingTime:
    """Seconds spent in training epochs (of the whole stack, when stacked), the part of it waiting for data, and
    the clips trained on."""

    seconds: float = 0.0
    data_wait: float = 0.0
    clips: int = 0

    def add(self, train: dict[str, Any]) -> None:
        """Count one epoch (``epoch_loop.train_epoch``'s summary)."""
        self.seconds += train["train_s"]
        self.data_wait += train["data_wait_s"]
        self.clips += train["clips"]

    def metrics(self) -> dict[str, float]:
        return {
            "train_time_s": self.seconds,
            "train_clips_per_s": self.clips / self.seconds if self.seconds > 0 else None,
            "data_wait_share": self.data_wait / self.seconds if self.seconds > 0 else None,
        }


def final_metrics(
    *,
    probe: str,
    best_epoch: int,
    select_metric: str,
    epochs: int,
    classes: Sequence[str],
    view_average: str = "softmax",
    pairs: Sequence[tuple[int, int]],
    val: dict[str, Any] | None,
    test: dict[str, Any] | None,
    parameters: int,
    parameters_without_head: int,
    training_time: TrainingTime,
    data_mode: str,
    device: str,
    validation: str = "cache",
) -> dict[str, Any]:
    """One seed's metrics, the material of ``metrics.json`` (``metrics_file.metrics_document``) and of a sweep
    trial's record: the best checkpoint's validation metrics (per video, order metrics included) at the top level,
    ``select_metric`` (the validation metric that chose it), ``view_average`` (how a video's clip scores were combined),
    its test metrics under ``test`` when there is a test
    split, ``headline_split``, ``chance`` (is that split's top-1 above chance, ``chance.py``), and what the run
    cost. Without validation (``val`` None: ``--val none``, a test split then exists) the top level holds no val
    figures, ``best_epoch`` is the last epoch trained, ``validation`` is "none" and ``checkpoint`` "last"; else
    ``validation`` is where the val split came from (``Splits.val_source``) and ``checkpoint`` "best"."""
    metrics: dict[str, Any] = {
        "probe": probe,
        "unit": UNITS[view_average],
        "view_average": view_average,
        "best_epoch": best_epoch,
        "select_metric": select_metric,
        "epochs": epochs,
        "classes": list(classes),
        "pairs": [[classes[a], classes[b]] for a, b in pairs],
        "pair_accuracy": None,
        "reversed_pair_accuracy": None,
        "shuffled_pair_accuracy": None,
    }
    metrics["validation"] = validation
    metrics["checkpoint"] = "last" if val is None else "best"
    if val is not None:
        metrics.update(val)
    # Which split the figures a user reads come from: test when there is one (nothing was selected on it), else
    # the validation split that also chose the checkpoint (optimistic).
    metrics["headline_split"] = "test" if test is not None else "val"
    metrics["chance"] = chance_of(test if test is not None else val)
    metrics["parameters"] = parameters
    metrics["parameters_without_head"] = parameters_without_head
    metrics.update(training_time.metrics())
    metrics["data_mode"] = data_mode
    metrics["device"] = device
    if test is not None:
        metrics["test"] = test
    return metrics


def headline_split(metrics: dict[str, Any]) -> str:
    """ "test" or "val": the split a ``metrics.json``'s top-level figures come from (``metrics_file``; any version
    reads as version 2)."""
    return metrics.get("headline_split", "val")


def headline_figures(metrics: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(split, figures, std or None) of a version-2 ``metrics.json``: its top level is the headline (the mean over
    seeds for ``--seeds``, with their std)."""
    return headline_split(metrics), metrics, metrics.get("std")


def run_chance(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``chance`` record of a ``metrics.json`` (pooled over seeds for ``--seeds``); None without one."""
    return (metrics or {}).get("chance")
