"""One training epoch over a batch plan, the loop shared by ``train_probe`` (one probe) and the stacked sweeps (K
probes at once): batches to the device, time spent waiting for data, loss and top-1 summed on the device (per
member when stacked), a progress bar. The optimizer step itself is the caller's.

Divergence: a non-finite training loss (or gradient norm, when the step reports one) is noticed where the loop
reads its sums back anyway — at each progress-bar update and at the end of the epoch — so it costs no extra
device sync. A single run then stops with ``NonFiniteLossError`` before its caller records or checkpoints the
epoch; a stacked run reports each member's finiteness (``finite``) and lets the caller drop the diverged ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from step_cache.errors import StepCacheError
from step_cache.interface import option
from step_cache.stopping import raise_if_stopping
from step_cache.training.augment import Augment
from step_cache.training.prefetch import source_batches
from step_cache.training.progress import RunProgress
from step_cache.training.token_data import TokenSource

# (tokens, labels) on the device -> (loss: () or (K,), logits: (B, C) or (K, B, C), learning rate(s) used), or the
# same with a 4th item, the gradient norm (() or (K,), as clip_grad_norm_ returns it; None when not computed). It
# runs the forward pass, the backward pass and one optimizer step.
TrainStep = Callable[[torch.Tensor, torch.Tensor], tuple[Any, ...]]
POSTFIX_EVERY = 10  # batches between progress-bar postfix updates (each reads the sums back: a device sync)


class NonFiniteLossError(StepCacheError, RuntimeError):
    """Training diverged: the loss (or the gradient norm) became NaN or infinite. ``epoch`` (the progress
    description, e.g. "epoch 3/30"), ``batch`` (1-based, the first non-finite one), ``lr`` (the step's learning
    rate, None when unknown) and ``quantity`` ("loss" or "gradient norm") say where and what."""

    @classmethod
    def for_seed(cls, seed: int, reason: str, lr: float) -> NonFiniteLossError:
        """A member of a multi-seed run diverged (``MemberResult.diverged`` says where)."""
        error = cls.__new__(cls)
        error.epoch, error.batch, error.lr, error.value, error.quantity = "", 0, lr, float("nan"), "loss"
        RuntimeError.__init__(
            error,
            f"training diverged: seed {seed}'s {reason}; the learning rate ({lr:g}) is likely too high — "
            f"try a lower {option('lr')}",
        )
        return error

    def __init__(self, epoch: str, batch: int, lr: float | None, value: float, quantity: str = "loss") -> None:
        self.epoch, self.batch, self.lr, self.value, self.quantity = epoch, batch, lr, value, quantity
        where = f"{epoch}, batch {batch}" if epoch else f"batch {batch}"
        rate = f"the learning rate ({lr:g} at that step)" if lr is not None else "the learning rate"
        super().__init__(
            f"training diverged: the {quantity} became non-finite ({value}) at {where}; {rate} is likely too high "
            f"— try a lower {option('lr')}"
        )


def train_epoch(
    source: TokenSource,
    plan: Sequence[np.ndarray],
    device: torch.device,
    step: TrainStep,
    *,
    members: tuple[int, ...] = (),
    description: str = "",
    progress: bool = True,
    augment: Augment | None = None,
    run_bar: RunProgress | None = None,
) -> dict[str, Any]:
    """Run ``step`` on every batch of ``plan``. Returns ``train_loss`` and ``train_top1`` (a float, or a list per
    member with ``members=(K,)``), ``lr`` (of the last step), ``train_s``, ``data_wait_s``, ``clips_per_s``,
    ``clips`` and ``finite`` (True, or a list per member: whether its loss and gradient norm stayed finite).
    ``augment`` (``augment.TokenAugmentation.for_epoch``) transforms each batch on the device before ``step``.
    ``run_bar`` (``progress.RunProgress``): draw on the run's bar instead of a bar of this epoch.

    Without ``members`` a non-finite loss or gradient norm raises ``NonFiniteLossError`` (at the next progress
    update or at the end of the epoch). With ``members`` it does not: one diverged member must not stop the
    others, so its ``finite`` is False (and its loss NaN or inf) and the caller drops it."""
    loss_sum = torch.zeros(members, device=device)
    correct = torch.zeros(members, device=device, dtype=torch.long)
    # The 1-based batch at which each member's loss (or gradient norm) first was non-finite; 0 while finite. Kept
    # on the device, so checking every batch costs a few tiny kernels and no sync.
    first_bad = torch.zeros(members, device=device, dtype=torch.long)
    bad_value = torch.zeros(members, device=device)  # the first non-finite value (the loss's, else the norm's)
    bad_norm = torch.zeros(members, device=device, dtype=torch.bool)  # the loss was finite there, the norm was not
    lrs: list[Any] = []  # the learning rate of each step (Python floats: free to keep), for the error message
    seen, done, wait = 0, 0, 0.0
    bar = run_bar or tqdm(total=len(plan), desc=description, unit="batch", leave=False, disable=not progress)
    start = time.perf_counter()
    try:
        batches = source_batches(source, plan, device)
        while True:
            raise_if_stopping()  # a Ctrl-C or SIGTERM swallowed somewhere stops the run at the next batch
            fetch = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - fetch
            if batch is None:
                break
            tokens = batch[0].to(device, non_blocking=True).float()
            labels = batch[1].to(device, non_blocking=True)
            if augment is not None:
                tokens, labels = augment(tokens, labels)
            loss, logits, lr, *rest = step(tokens, labels)
            lrs.append(lr)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(dim=-1) == labels).sum(dim=-1)
            seen += len(labels)
            done += 1  # counted here: a disabled bar does not count, and reading its n would sync every batch
            value = loss.detach().float()
            norm = rest[0] if rest else None
            if norm is not None:  # a finite loss with a non-finite gradient norm: the weights are NaN from this step on
                norm_only = torch.isfinite(value) & ~torch.isfinite(norm.detach())
                value = torch.where(norm_only, norm.detach().float(), value)
            new = (first_bad == 0) & ~torch.isfinite(value)
            first_bad = torch.where(new, done, first_bad)
            bad_value = torch.where(new, value, bad_value)
            if norm is not None:
                bad_norm |= new & norm_only
            bar.update()
            if progress and (done % POSTFIX_EVERY == 0 or done == len(plan)):
                if not members:
                    _raise_if_diverged(first_bad, bad_value, bad_norm, description, lrs)
                bar.set_postfix(_postfix(loss_sum / seen, correct.double() / seen))
        if not members:
            _raise_if_diverged(first_bad, bad_value, bad_norm, description, lrs)
    finally:
        if run_bar is None:  # the run's bar outlives the epoch
            bar.close()
    elapsed = time.perf_counter() - start
    return {
        "train_loss": (loss_sum.double() / seen).tolist(),
        "train_top1": (correct.double() / seen).tolist(),
        "lr": lrs[-1] if lrs else None,
        "train_s": elapsed,
        "data_wait_s": wait,
        "clips_per_s": seen / elapsed if elapsed > 0 else None,
        "clips": seen,
        "finite": (first_bad == 0).tolist(),
    }


def _raise_if_diverged(
    first_bad: torch.Tensor, bad_value: torch.Tensor, bad_norm: torch.Tensor, description: str, lrs: list[Any]
) -> None:
    """For a single run (0-d tensors): raise ``NonFiniteLossError`` when a batch went non-finite."""
    batch = int(first_bad.item())
    if batch == 0:
        return
    lr = lrs[batch - 1]
    quantity = "gradient norm" if bool(bad_norm.item()) else "loss"
    raise NonFiniteLossError(
        description, batch, float(lr) if isinstance(lr, (int, float)) else None, float(bad_value.item()), quantity
    )


def _postfix(loss: torch.Tensor, top1: torch.Tensor) -> dict[str, str]:
    if loss.ndim == 0:
        return {"loss": f"{loss.item():.3f}", "acc": f"{top1.item():.3f}"}
    finite = torch.isfinite(loss)  # over the members that have not diverged: a NaN would hide the others' best
    if not bool(finite.any()):
        return {"best loss": "nan", "best acc": "nan"}
    return {"best loss": f"{loss[finite].min().item():.3f}", "best acc": f"{top1[finite].max().item():.3f}"}
