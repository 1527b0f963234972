"""Shared by the stacked-optimizer tests (tests/test_sweeps.py: AdamW, tests/test_sgd.py: SGD): K STEP probes stepped
as one stack and as K lone copies with torch's optimizer, on the same random gradients."""

from __future__ import annotations

import copy

import torch
from torch import nn

from step_cache.probes import build_probe
from step_cache.training.optimization import build_optimizer, build_scheduler
from step_cache.training.stacking.members import StackedProbes

TOTAL_STEPS = 8


def step_stack_and_lone(stacked_class: type, kind: str, settings: list[tuple], dtype=torch.float32):
    """``settings``: (lr, weight decay, warm-up steps, clip) per member. Returns (stack, lone probes) after
    ``TOTAL_STEPS`` steps; checks every step that the stacked lrs are the lone schedulers'."""
    torch.manual_seed(0)
    probes = [
        build_probe("step", dim=16, num_classes=3, frames=4, tokens_per_frame=5, cls_index=0).to(dtype)
        for _ in settings
    ]
    lone = [copy.deepcopy(p) for p in probes]
    stack = StackedProbes(probes)
    stacked = stacked_class(
        stack.params, lr=[s[0] for s in settings], weight_decay=[s[1] for s in settings],
        warmup_steps=[s[2] for s in settings], clip_grad=[s[3] for s in settings], total_steps=TOTAL_STEPS,
    )  # fmt: skip
    optimizers = [build_optimizer(m, s[0], s[1], kind) for m, s in zip(lone, settings, strict=True)]
    schedulers = [build_scheduler(o, TOTAL_STEPS, s[2]) for o, s in zip(optimizers, settings, strict=True)]
    generator = torch.Generator().manual_seed(1)
    for _ in range(TOTAL_STEPS):
        grads = {name: (torch.randn(p.shape, generator=generator) * 0.3).to(dtype) for name, p in stack.params.items()}
        for name, p in stack.params.items():
            p.grad = grads[name].clone()
        assert stacked.current_lr() == [o.param_groups[0]["lr"] for o in optimizers]
        stacked.clip_gradients(stack.params)
        stacked.step(stack.params)
        for k, (model, optimizer, scheduler) in enumerate(zip(lone, optimizers, schedulers, strict=True)):
            for name, p in model.named_parameters():
                p.grad = grads[name][k].clone()
            if settings[k][3] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), settings[k][3])
            optimizer.step()
            scheduler.step()
    return stack, lone
