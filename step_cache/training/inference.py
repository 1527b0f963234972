"""Running a probe over cached clips: logits in any frame order, and the metrics of a split (per video, with the
order metrics). Shared by training (per-epoch validation, final metrics), ``evaluate`` and ``predict``."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from step_cache.training.frame_order import frame_order, permute_frames
from step_cache.training.metrics import average_by_video, classification_metrics
from step_cache.training.token_data import TokenSource, batch_plan


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); full float32 on CPU, where runs must be reproducible."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def collect_logits(
    probe: nn.Module,
    source: TokenSource,
    indices: np.ndarray,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    amp: bool = True,
    order: str = "original",
) -> np.ndarray:
    """(N, C) float32 logits of the clips ``indices`` (in that order), frames reordered by ``order``
    ("original", "reversed", "shuffled")."""
    device = device or next(probe.parameters()).device
    was_training = probe.training
    probe.eval()
    outputs = []
    try:
        for tokens, _, _ in source.batches(batch_plan(indices, batch_size, shuffle=False)):
            tokens = tokens.to(device, non_blocking=True).float()
            tokens = permute_frames(tokens, frame_order(order, tokens.shape[1]))
            with autocast(device, amp):
                outputs.append(probe(tokens).float().cpu())
    finally:
        probe.train(was_training)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).numpy()


def clip_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy over clips (no label smoothing), NaN for none."""
    if len(labels) == 0:
        return float("nan")
    return float(F.cross_entropy(torch.from_numpy(logits).float(), torch.as_tensor(labels, dtype=torch.long)))


def split_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    videos: Sequence[str],
    classes: Sequence[str],
    pairs: Sequence[tuple[int, int]] = (),
) -> dict[str, Any]:
    """Metrics of one split with clip logits averaged per video (the unit of every accuracy); the loss is per clip."""
    video_logits, _, first = average_by_video(logits, videos)
    summary = classification_metrics(video_logits, np.asarray(labels)[first], classes, pairs)
    summary["clips"] = len(labels)
    summary["videos"] = summary.pop("count")
    summary["loss"] = clip_loss(logits, labels)
    return summary


ORDER_METRICS = ("reversed", "shuffled")


def evaluate_clips(
    probe: nn.Module,
    source: TokenSource,
    indices: np.ndarray,
    labels: np.ndarray,
    videos: np.ndarray,
    classes: Sequence[str],
    pairs: Sequence[tuple[int, int]] = (),
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    amp: bool = True,
    orders: bool = True,
) -> dict[str, Any]:
    """Full metrics of clips ``indices`` (labels/videos indexed by global clip index), plus with ``orders`` the
    top-1 (and pair accuracy) with frames reversed and shuffled."""
    kwargs = {"batch_size": batch_size, "device": device, "amp": amp}
    logits = collect_logits(probe, source, indices, **kwargs)
    summary = split_metrics(logits, labels[indices], videos[indices], classes, pairs)
    if orders:
        for name in ORDER_METRICS:
            perturbed = split_metrics(
                collect_logits(probe, source, indices, order=name, **kwargs),
                labels[indices],
                videos[indices],
                classes,
                pairs,
            )
            summary[f"{name}_top1"] = perturbed["top1"]
            if pairs:
                summary[f"{name}_pair_accuracy"] = perturbed["pair_accuracy"]
    return summary
