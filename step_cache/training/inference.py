"""Running a probe over cached clips: logits in any frame order, and the metrics of a split (per video, with the
order metrics). Shared by training (per-epoch validation, final metrics), stacked sweeps (every member at once),
``evaluate`` and ``predict``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from step_cache.training.frame_order import frame_order, permute_frames
from step_cache.training.metrics import average_by_video, classification_metrics
from step_cache.training.prefetch import source_batches
from step_cache.training.token_data import TokenSource, batch_plan


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); full float32 on CPU, where runs must be reproducible."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def tf32_matmuls(device: torch.device, tf32: bool) -> Iterator[None]:
    """Within the block, float32 matmuls and convolutions on CUDA use TF32 when ``tf32`` (10-bit mantissa inputs,
    float32 accumulation) and full float32 when not; the process's previous choice comes back after. Nothing changes
    on other devices. What autocast runs in bf16 is not affected (docs/training.md, "TF32")."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def forward_batches(
    forward: Callable[[torch.Tensor], torch.Tensor],
    source: TokenSource,
    indices: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    amp: bool,
    order: str = "original",
) -> list[torch.Tensor]:
    """``forward`` (a probe, or stacked probes) on the clips ``indices`` in batches, frames reordered by ``order``
    ("original", "reversed", "shuffled"): its float32 outputs per batch, on the CPU. The batches come as training
    gets them (``prefetch.source_batches``); the outputs stay on the device until the end, then come back in one
    copy (one sync per pass, not one per batch)."""
    outputs = []
    plan = batch_plan(indices, batch_size, shuffle=False)
    index = None  # the frame permutation as a device tensor, made once per pass
    for tokens, _, _ in source_batches(source, plan, device):
        tokens = tokens.to(device, non_blocking=True).float()
        if index is None and (permutation := frame_order(order, tokens.shape[1])) is not None:
            index = torch.as_tensor(permutation, device=device)
        tokens = tokens if index is None else permute_frames(tokens, index)
        with autocast(device, amp):
            outputs.append(forward(tokens).float())
    if not outputs:
        return []
    # the batch axis is -2 of a probe's (B, C) and of a stack's (K, B, C) outputs
    return list(torch.cat(outputs, dim=-2).cpu().split([out.shape[-2] for out in outputs], dim=-2))


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
    try:
        outputs = forward_batches(probe, source, indices, batch_size=batch_size, device=device, amp=amp, order=order)
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
    view_average: str = "softmax",
) -> dict[str, Any]:
    """Metrics of one split with clip scores averaged per video (the unit of every accuracy): the mean softmax of its
    rows (clips, test-view crops) or, with ``view_average`` "logits", their mean logits; the loss is per clip."""
    video_logits, _, first = average_by_video(logits, videos, view_average)
    summary = classification_metrics(video_logits, np.asarray(labels)[first], classes, pairs)
    summary["clips"] = len(labels)
    summary["videos"] = summary.pop("count")
    summary["loss"] = clip_loss(logits, labels)
    return summary


ORDER_METRICS = ("reversed", "shuffled")


def evaluate_logits(
    logits_of: Callable[[str], np.ndarray],
    labels: np.ndarray,
    videos: np.ndarray,
    classes: Sequence[str],
    pairs: Sequence[tuple[int, int]] = (),
    *,
    orders: bool = True,
    view_average: str = "softmax",
) -> list[dict[str, Any]]:
    """Metrics of K models on the same clips (``split_metrics``, one dict per model), where ``logits_of(order)``
    gives their (K, N, C) logits with frames in ``order``; with ``orders`` also the top-1 (and pair accuracy)
    with frames reversed and shuffled."""

    def summaries(order: str) -> list[dict[str, Any]]:
        return [split_metrics(logits, labels, videos, classes, pairs, view_average) for logits in logits_of(order)]

    results = summaries("original")
    if orders:
        for name in ORDER_METRICS:
            for summary, perturbed in zip(results, summaries(name), strict=True):
                summary[f"{name}_top1"] = perturbed["top1"]
                if pairs:
                    summary[f"{name}_pair_accuracy"] = perturbed["pair_accuracy"]
    return results


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
    view_average: str = "softmax",
) -> dict[str, Any]:
    """Full metrics of clips ``indices`` (labels/videos indexed by global clip index; per video as ``view_average``
    says), plus with ``orders`` the top-1 (and pair accuracy) with frames reversed and shuffled."""

    def logits_of(order: str) -> np.ndarray:
        logits = collect_logits(probe, source, indices, batch_size=batch_size, device=device, amp=amp, order=order)
        return logits[None]

    return evaluate_logits(
        logits_of, labels[indices], videos[indices], classes, pairs, orders=orders, view_average=view_average
    )[0]
