"""The optimizer of one probe — AdamW with decoupled weight decay, or SGD with momentum 0.9 (DINOv2's linear
evaluation), both decaying weight matrices only — and a per-step linear warm-up + cosine schedule (its length, and
the automatic epochs and batch size, are ``schedule.py``'s). A stack of probes has the same two
(``stacking/adamw.py``, ``stacking/sgd.py``)."""

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


SGD_MOMENTUM = 0.9  # dinov2/eval/linear.py, run_eval_linear: torch.optim.SGD(..., momentum=0.9, weight_decay=0)


def build_optimizer(module: nn.Module, lr: float, weight_decay: float, kind: str = "adamw") -> torch.optim.Optimizer:
    """``kind`` (``TrainConfig.optimizer``): "adamw" or "sgd" (momentum 0.9, weight decay added to the gradient)."""
    groups = parameter_groups(module, weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=SGD_MOMENTUM)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


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


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Call ``scheduler.step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps))
