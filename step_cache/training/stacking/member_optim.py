"""What the stacked optimizers (``adamw.StackedAdamW``, ``sgd.StackedSGD``) share: K probes stacked along a leading
axis, each member with its own learning rate, weight decay, warm-up and gradient clipping, and the per-member
scalars of each step read from a device table, so a step makes no host tensor and no device sync
(``step_cache/host_traffic.py``; tests/test_host_traffic.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from step_cache.training.optimization import WarmupCosine, decays

CLIP_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_
# Steps whose per-member scalars are copied to the device at once: one small host-to-device copy per this many
# steps (and after members are dropped) instead of a few per step.
SCHEDULE_CHUNK = 256


class StackedOptimizer:
    """Optimizer state for stacked parameters ``{name: (K, ...)}``: ``lr``, ``weight_decay``, ``warmup_steps`` and
    ``clip_grad`` (0 = no clipping) hold one value per member; every member follows ``WarmupCosine(total_steps,
    warmup_steps[k])`` scaled by its ``lr[k]``. Subclasses give ``_scalar_rows`` (a step's per-member scalars),
    ``STATE`` (the names of their per-parameter state, each ``{name: tensor like the parameter}``) and ``step``."""

    STATE: tuple[str, ...] = ()

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
        self.state: dict[str, dict[str, torch.Tensor]] = {
            kind: {name: torch.zeros_like(p, memory_format=torch.preserve_format) for name, p in params.items()}
            for kind in self.STATE
        }
        self.steps = 0
        self._table: torch.Tensor | None = None  # _step_scalars' per-member scalars of SCHEDULE_CHUNK steps
        self._table_start = 0
        self._max_norm: torch.Tensor | None = None  # _clip_limits'

    @property
    def size(self) -> int:
        return len(self.lr)

    def current_lr(self) -> list[float]:
        """Each member's learning rate for the next step (what LambdaLR puts into ``param_groups[0]['lr']``)."""
        return [base * schedule(self.steps) for base, schedule in zip(self.lr, self.schedules, strict=True)]

    def _scalar_rows(self, step: int, lr: list[float]) -> list[list[float]]:
        """The per-member scalars (rows of K Python floats) of optimizer step ``step`` at learning rates ``lr``."""
        raise NotImplementedError

    def _step_scalars(self, like: torch.Tensor) -> torch.Tensor:
        """(rows, K) on ``like``'s device and dtype: the current step's ``_scalar_rows``, a view into a table of the
        next ``SCHEDULE_CHUNK`` steps. The table is computed on the host in float64 Python floats (as PyTorch
        computes its scalar arguments), rounded to the parameter dtype and copied to the device once per chunk (or
        after ``keep``), so a step itself makes no host tensor."""
        start = self.steps - self.steps % SCHEDULE_CHUNK
        table = self._table
        if table is None or self._table_start != start or table.device != like.device or table.dtype != like.dtype:
            rows = []
            for step in range(start, start + SCHEDULE_CHUNK):
                lr = [base * schedule(step) for base, schedule in zip(self.lr, self.schedules, strict=True)]
                rows.append(self._scalar_rows(step, lr))
            table = torch.tensor(rows, dtype=torch.float64).to(device=like.device, dtype=like.dtype)
            self._table, self._table_start = table, start
        return table[self.steps - start]

    def _clip_limits(self, like: torch.Tensor) -> torch.Tensor:
        """Each member's max gradient norm (K,) on the device, made once (and again after ``keep``)."""
        if self._max_norm is None or self._max_norm.device != like.device or self._max_norm.dtype != like.dtype:
            # from float64, as torch takes the Python float: a float32 0.05 would be off by 1.5e-8 in a float64 stack
            self._max_norm = torch.tensor(self.clip_grad, dtype=torch.float64).to(device=like.device, dtype=like.dtype)
        return self._max_norm

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
        max_norm = self._clip_limits(total)
        # clip_grad_norm_ computes max_norm / (total + eps) with a Python float max_norm, which torch evaluates
        # as reciprocal(total + eps) * max_norm (Tensor.__rtruediv__): the same here, so the result is identical.
        coef = torch.clamp((total + CLIP_EPS).reciprocal() * max_norm, max=1.0)
        coef = torch.where(max_norm > 0, coef, torch.ones_like(coef))
        torch._foreach_mul_(grads, [self._per_member(coef.to(g.dtype), g) for g in grads])
        return total

    def step(self, params: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the members at ``index`` (a 1-D long tensor), in that order."""
        picked = index.tolist()
        self.lr = [self.lr[i] for i in picked]
        self.weight_decay = [self.weight_decay[i] for i in picked]
        self.clip_grad = [self.clip_grad[i] for i in picked]
        self.schedules = [self.schedules[i] for i in picked]
        self._table, self._max_norm = None, None  # rebuilt for the members kept at the next step
        for tensors in self.state.values():
            for name, value in tensors.items():
                tensors[name] = value[index.to(value.device)]
