"""AdamW with decoupled weight decay on weight matrices only, and a per-step linear warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

# Learnable tokens and embeddings (STEP's frame_pos, CLS tokens, attentive-pooling queries) are not decayed:
# shrinking them towards zero fights what they encode, as for norms and biases.
NO_DECAY_NAME_PARTS = ("pos", "cls_token", "query", "token", "embed")


def decays(name: str, parameter: torch.Tensor) -> bool:
    """Whether weight decay applies: matrices do; biases, norm scales (1-D) and tokens/embeddings do not."""
    leaf = name.rsplit(".", 1)[-1]
    return parameter.ndim >= 2 and not any(part in leaf for part in NO_DECAY_NAME_PARTS)


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            (decay if decays(name, parameter) else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(module, weight_decay), lr=lr, betas=(0.9, 0.999))


class WarmupCosine:
    """LR multiplier for optimizer step s (0-based): (s+1)/W during W warm-up steps, then a cosine from 1 towards
    0 over the remaining steps. A picklable callable, so the scheduler's state dict stays complete."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        remaining = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / remaining)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# The automatic schedule (``epochs`` / ``batch_size`` left to "auto"): a schedule counted in epochs does not
# transfer across dataset sizes (30 epochs of 180 clips at batch 64 are 90 optimizer steps, too few to learn a frame
# embedding from scratch), so the batch shrinks on small sets and the epochs grow until the run has at least
# AUTO_MIN_STEPS optimizer steps. The constants come from the demo's old recipe (about 2400 steps worked, 90 did
# not) and were checked on benchmarks of other sizes, kinds, frame counts and difficulty (docs/training.md).
AUTO_BATCHES_PER_EPOCH = 16  # the auto batch aims at this many batches per epoch...
# ...as a power of two in this range. The floor is 16, not 8: at batch 8 the attentive probe's default trailed its
# tuned recipe on every 8-videos-per-class benchmark, and batch 16 beat batch 8 on test by 3-14 points of top-1
# at equal epochs (docs/training.md, "The smallest automatic batch is 16").
AUTO_BATCH_RANGE = (16, 64)
AUTO_MIN_EPOCHS = 30
AUTO_MIN_STEPS = 1500
AUTO_MAX_EPOCHS = 1000


# Peak learning rate when none is given. The linear probe (a convex head on per-frame CLS tokens) chose 1e-2 on val
# on 6 of the 7 benchmarks of docs/training.md (1e-3 left it under-trained); the attention probes 1e-3 or 3e-3.
DEFAULT_LR = {"linear": 1e-2}
FALLBACK_LR = 1e-3


def default_lr(probe: str) -> float:
    return DEFAULT_LR.get(probe, FALLBACK_LR)


def auto_batch_size(train_clips: int) -> int:
    """The largest power of two giving at least ``AUTO_BATCHES_PER_EPOCH`` batches, clamped to ``AUTO_BATCH_RANGE``,
    and never more than the training clips (a set smaller than the floor trains in one batch of all its clips)."""
    low, high = AUTO_BATCH_RANGE
    target = max(1, train_clips // AUTO_BATCHES_PER_EPOCH)
    return int(min(high, max(low, 2 ** math.floor(math.log2(target))), max(1, train_clips)))


def auto_epochs(train_clips: int, batch_size: int) -> int:
    """At least ``AUTO_MIN_EPOCHS``, and enough epochs for ``AUTO_MIN_STEPS`` optimizer steps (at most
    ``AUTO_MAX_EPOCHS``)."""
    per_epoch = math.ceil(train_clips / batch_size)
    return int(min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, math.ceil(AUTO_MIN_STEPS / per_epoch))))


def resolve_schedule(epochs: int | None, batch_size: int | None, train_clips: int) -> tuple[int, int]:
    """(epochs, batch size) of a run: the given values, or the automatic ones where ``None``."""
    batch = batch_size if batch_size is not None else auto_batch_size(train_clips)
    return (epochs if epochs is not None else auto_epochs(train_clips, batch)), batch


def schedule_steps(epochs: int, train_clips: int, batch_size: int, warmup_epochs: float) -> tuple[int, int]:
    """(total optimizer steps, warm-up steps) of a run: one step per batch of ``batch_size`` of the
    ``train_clips``, warm-up epochs rounded to whole steps."""
    per_epoch = math.ceil(train_clips / batch_size)
    return epochs * per_epoch, round(warmup_epochs * per_epoch)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Call ``scheduler.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps))
