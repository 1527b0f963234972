"""SGD with momentum for K probes stacked along a leading axis (``train-probe --optimizer sgd`` in a stack: ``--seeds``,
sweeps, the ``dinov2-linear`` protocol's lr grid), each member with its own learning rate, weight decay, warm-up and
gradient clipping.

It is ``torch.optim.SGD(momentum=0.9)`` as ``optimization.build_optimizer`` configures it for one probe (weight
decay added to the gradient, on the weight matrices only: ``optimization.decays``; no dampening, no Nesterov; the
same ``WarmupCosine`` multiplier per step), applied to every member at once with ``_foreach`` ops and per-member
scalars from a device table (``member_optim``), so a step makes no host tensor. The momentum buffer starts at zero:
its first update ``0 * momentum + grad`` is the gradient itself, as PyTorch's first step copies it.
"""

from __future__ import annotations

import torch

from step_cache.training.optimization import SGD_MOMENTUM
from step_cache.training.stacking.member_optim import StackedOptimizer


class StackedSGD(StackedOptimizer):
    """SGD-with-momentum state for stacked parameters ``{name: (K, ...)}``: the momentum buffers."""

    STATE = ("momentum",)

    def _scalar_rows(self, step: int, lr: list[float]) -> list[list[float]]:
        """Each member's ``-lr`` for ``step`` and its weight decay."""
        return [[-rate for rate in lr], list(self.weight_decay)]

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor]) -> None:
        """One SGD step of every member (the gradients in ``params[name].grad``), then the schedule advances:
        ``d = grad + wd * param`` (decayed parameters), ``buf = momentum * buf + d``, ``param += -lr * buf``."""
        stepping = [name for name, param in params.items() if param.grad is not None]
        if not stepping:
            self.steps += 1
            return
        like = params[stepping[0]]
        neg_lr, decay = self._step_scalars(like)
        self.steps += 1
        param_list = [params[name] for name in stepping]
        directions = [params[name].grad for name in stepping]
        if any(self.weight_decay):
            # a new tensor per decayed parameter, as torch's grad.add(param, alpha=wd): the gradient stays as it was
            directions = [
                torch.addcmul(g, params[name], self._per_member(decay, g)) if self.decays[name] else g
                for name, g in zip(stepping, directions, strict=True)
            ]
        buffers = [self.state["momentum"][name] for name in stepping]
        torch._foreach_mul_(buffers, SGD_MOMENTUM)
        torch._foreach_add_(buffers, directions)
        torch._foreach_addcmul_(param_list, buffers, [self._per_member(neg_lr, p) for p in param_list])
