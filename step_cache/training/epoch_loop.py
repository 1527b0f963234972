"""One training epoch over a batch plan, the loop shared by ``train_probe`` (one probe) and the stacked sweeps (K
probes at once): batches to the device, time spent waiting for data, loss and top-1 summed on the device (per
member when stacked), a progress bar. The optimizer step itself is the caller's."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from step_cache.training.token_data import TokenSource

# (tokens, labels) on the device -> (loss: () or (K,), logits: (B, C) or (K, B, C), learning rate(s) used). It runs
# the forward pass, the backward pass and one optimizer step.
TrainStep = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, Any]]
POSTFIX_EVERY = 10  # batches between progress-bar postfix updates (each reads the sums back: a device sync)


def train_epoch(
    source: TokenSource,
    plan: Sequence[np.ndarray],
    device: torch.device,
    step: TrainStep,
    *,
    members: tuple[int, ...] = (),
    description: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``step`` on every batch of ``plan``. Returns ``train_loss`` and ``train_top1`` (a float, or a list per
    member with ``members=(K,)``), ``lr`` (of the last step), ``train_s``, ``data_wait_s``, ``clips_per_s`` and
    ``clips``."""
    loss_sum = torch.zeros(members, device=device)
    correct = torch.zeros(members, device=device, dtype=torch.long)
    seen, done, wait, lr = 0, 0, 0.0, None
    bar = tqdm(total=len(plan), desc=description, unit="batch", leave=False, disable=not progress)
    start = time.perf_counter()
    batches = iter(source.batches(plan))
    while True:
        fetch = time.perf_counter()
        batch = next(batches, None)
        wait += time.perf_counter() - fetch
        if batch is None:
            break
        tokens = batch[0].to(device, non_blocking=True).float()
        labels = batch[1].to(device, non_blocking=True)
        loss, logits, lr = step(tokens, labels)
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(dim=-1) == labels).sum(dim=-1)
        seen += len(labels)
        done += 1  # counted here: a disabled bar does not count, and reading its n would sync every batch
        bar.update()
        if progress and (done % POSTFIX_EVERY == 0 or done == len(plan)):
            bar.set_postfix(_postfix(loss_sum / seen, correct.double() / seen))
    bar.close()
    elapsed = time.perf_counter() - start
    return {
        "train_loss": (loss_sum.double() / seen).tolist(),
        "train_top1": (correct.double() / seen).tolist(),
        "lr": lr,
        "train_s": elapsed,
        "data_wait_s": wait,
        "clips_per_s": seen / elapsed if elapsed > 0 else math.nan,
        "clips": seen,
    }


def _postfix(loss: torch.Tensor, top1: torch.Tensor) -> dict[str, str]:
    if loss.ndim == 0:
        return {"loss": f"{loss.item():.3f}", "acc": f"{top1.item():.3f}"}
    return {"best loss": f"{loss.min().item():.3f}", "best acc": f"{top1.max().item():.3f}"}
