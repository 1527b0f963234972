"""AdamW for K probes stacked along a leading axis, each member with its own learning rate, weight decay, warm-up
and gradient clipping.

It is ``torch.optim.AdamW`` as ``optimization.build_optimizer`` / ``build_scheduler`` configure it for one probe
(the same no-decay groups via ``optimization.decays``, the same ``WarmupCosine`` multiplier per step, betas
(0.9, 0.999), eps 1e-8), applied to every member at once. The per-member scalars (1 − lr·wd, lr / bias
correction) are computed in float64 exactly as PyTorch computes its Python-float scalars and then rounded to the
parameter dtype, and the tensor operations follow PyTorch's single-tensor (CPU) AdamW in order, so a member
steps as its lone counterpart does (bit for bit given equal gradients, tested).
"""

from __future__ import annotations

import torch

from step_cache.training.stacking.member_optim import StackedOptimizer

BETAS = (0.9, 0.999)
EPS = 1e-8


class StackedAdamW(StackedOptimizer):
    """AdamW state for stacked parameters ``{name: (K, ...)}`` (``member_optim.StackedOptimizer``: per-member lr,
    weight decay, warm-up and clipping; a step makes no host tensor): the moments ``exp_avg`` and ``exp_avg_sq``."""

    STATE = ("exp_avg", "exp_avg_sq")

    @property
    def exp_avg(self) -> dict[str, torch.Tensor]:
        return self.state["exp_avg"]

    @property
    def exp_avg_sq(self) -> dict[str, torch.Tensor]:
        return self.state["exp_avg_sq"]

    def _scalar_rows(self, step: int, lr: list[float]) -> list[list[float]]:
        """Each member's ``-lr / bias_correction1`` and ``1 - lr * wd`` for ``step``."""
        bias_correction1 = 1 - BETAS[0] ** (step + 1)
        return [
            [-(rate / bias_correction1) for rate in lr],
            [1 - r * wd for r, wd in zip(lr, self.weight_decay, strict=True)],
        ]

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor]) -> None:
        """One AdamW step of every member (the gradients in ``params[name].grad``), then the schedule advances.

        The tensor operations are ``_foreach`` ops over all parameters (a few kernels per step on CUDA, not a few
        per parameter); on the CPU they run the single-tensor ops in the same order, hence the exact match."""
        stepping = [name for name, param in params.items() if param.grad is not None]
        if not stepping:
            self.steps += 1
            return
        like = params[stepping[0]]
        neg_step, shrink = self._step_scalars(like)
        self.steps += 1
        beta1, beta2 = BETAS
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        param_list = [params[name] for name in stepping]
        grads = [param.grad for param in param_list]
        exp_avgs = [self.exp_avg[name] for name in stepping]
        exp_avg_sqs = [self.exp_avg_sq[name] for name in stepping]
        decaying = [params[name] for name in stepping if self.decays[name]]
        if decaying:
            torch._foreach_mul_(decaying, [self._per_member(shrink, p) for p in decaying])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, EPS)
        # addcdiv_(exp_avg, denom, value=v) computes self + (v * exp_avg) / denom: same order here.
        update = torch._foreach_mul(exp_avgs, [self._per_member(neg_step, p) for p in param_list])
        torch._foreach_div_(update, denom)
        torch._foreach_add_(param_list, update)
