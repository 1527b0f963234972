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

from collections.abc import Sequence

import torch

from step_cache.training.optimization import WarmupCosine, decays

BETAS = (0.9, 0.999)
EPS = 1e-8
CLIP_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_


class StackedAdamW:
    """Optimizer state for stacked parameters ``{name: (K, ...)}``.

    ``lr``, ``weight_decay``, ``warmup_steps`` and ``clip_grad`` (0 = no clipping) hold one value per member;
    every member follows ``WarmupCosine(total_steps, warmup_steps[k])`` scaled by its ``lr[k]``.
    """

    def __init__(
        self,
        params: dict[str, torch.Tensor],
        *,
        lr: Sequence[float],
        weight_decay: Sequence[float],
        warmup_steps: Sequence[int],
        clip_grad: Sequence[float],
        total_steps: int,
    ) -> None:
        members = {len(lr), len(weight_decay), len(warmup_steps), len(clip_grad)}
        sizes = {p.shape[0] for p in params.values()}
        if len(members) != 1 or members != sizes:
            raise ValueError(f"hyperparameters for {sorted(members)} members, parameters stacked for {sorted(sizes)}")
        self.lr = [float(v) for v in lr]
        self.weight_decay = [float(v) for v in weight_decay]
        self.clip_grad = [float(v) for v in clip_grad]
        self.schedules = [WarmupCosine(total_steps, w) for w in warmup_steps]
        self.decays = {name: decays(name, p[0]) for name, p in params.items()}
        self.exp_avg = {name: torch.zeros_like(p, memory_format=torch.preserve_format) for name, p in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p, memory_format=torch.preserve_format) for name, p in params.items()}
        self.steps = 0

    @property
    def size(self) -> int:
        return len(self.lr)

    def current_lr(self) -> list[float]:
        """Each member's learning rate for the next step (what LambdaLR puts into ``param_groups[0]['lr']``)."""
        return [base * schedule(self.steps) for base, schedule in zip(self.lr, self.schedules, strict=True)]

    @staticmethod
    def _member_scalars(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        """Per-member Python floats as a (K,) tensor in ``like``'s dtype: rounded as a Python scalar argument is."""
        return torch.tensor(values, dtype=torch.float64).to(device=like.device, dtype=like.dtype)

    @staticmethod
    def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.reshape((-1,) + (1,) * (like.ndim - 1))

    @torch.no_grad()
    def clip_gradients(self, params: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """``clip_grad_norm_`` per member: each member's gradients scaled to at most its own max norm. Returns each
        member's total gradient norm before clipping (K,), as ``clip_grad_norm_`` returns its one; None when no
        member clips (then no norm is computed). A non-finite norm means the member diverged: its weights become
        NaN in this step (``epoch_loop.train_epoch`` takes it as the step's 4th value and reports the member)."""
        if not any(c > 0 for c in self.clip_grad):
            return None
        grads = [p.grad for p in params.values() if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (params, K)
        total = torch.linalg.vector_norm(norms, dim=0)  # (K,)
        max_norm = torch.tensor(self.clip_grad, device=total.device).to(total.dtype)
        # clip_grad_norm_ computes max_norm / (total + eps) with a Python float max_norm, which torch evaluates
        # as reciprocal(total + eps) * max_norm (Tensor.__rtruediv__): the same here, so the result is identical.
        coef = torch.clamp((total + CLIP_EPS).reciprocal() * max_norm, max=1.0)
        coef = torch.where(max_norm > 0, coef, torch.ones_like(coef))
        for g in grads:
            g.mul_(self._per_member(coef.to(g.dtype), g))
        return total

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor]) -> None:
        """One AdamW step of every member (the gradients in ``params[name].grad``), then the schedule advances."""
        lr = self.current_lr()
        self.steps += 1
        beta1, beta2 = BETAS
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        like = next(iter(params.values()))
        neg_step = self._member_scalars([-(rate / bias_correction1) for rate in lr], like)
        shrink = self._member_scalars([1 - rate * wd for rate, wd in zip(lr, self.weight_decay, strict=True)], like)
        for name, param in params.items():
            grad = param.grad
            if grad is None:
                continue
            exp_avg, exp_avg_sq = self.exp_avg[name], self.exp_avg_sq[name]
            if self.decays[name]:
                param.mul_(self._per_member(shrink, param))
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(EPS)
            # addcdiv_(exp_avg, denom, value=v) computes self + (v * exp_avg) / denom: same order here.
            param.add_(exp_avg * self._per_member(neg_step, param) / denom)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the members at ``index`` (a 1-D long tensor), in that order."""
        picked = index.tolist()
        self.lr = [self.lr[i] for i in picked]
        self.weight_decay = [self.weight_decay[i] for i in picked]
        self.clip_grad = [self.clip_grad[i] for i in picked]
        self.schedules = [self.schedules[i] for i in picked]
        for state in (self.exp_avg, self.exp_avg_sq):
            for name, value in state.items():
                state[name] = value[index.to(value.device)]
