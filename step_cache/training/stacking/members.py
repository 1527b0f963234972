"""K probes of one shape held as stacked tensors and run with one vmapped ``functional_call``.

``torch.func.stack_module_state`` stacks the members' parameters and buffers along a leading K axis (the
dropout rates are buffers, so each member keeps its own); a copy of the first probe on the meta device supplies
the code. ``vmap(..., randomness='different')`` gives every member its own dropout masks, and the probes'
``shared_matmul`` lets all members read the batch's tokens once.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


class StackedProbes:
    """Stacked parameters ``{name: (K, ...)}`` (leaf tensors that collect gradients) and buffers of K probes."""

    def __init__(self, probes: Sequence[nn.Module]) -> None:
        if not probes:
            raise ValueError("no probes to stack")
        shapes = {tuple((n, tuple(p.shape)) for n, p in probe.named_parameters()) for probe in probes}
        if len(shapes) != 1:
            raise ValueError("stacked probes must have the same parameter names and shapes")
        self.params, self.buffers = stack_module_state(list(probes))
        self.base = copy.deepcopy(probes[0]).to("meta")
        self.state_keys = list(probes[0].state_dict())  # parameters and persistent buffers, in state_dict order

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def _call(self, params: dict, buffers: dict, tokens: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (tokens,))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (K, B, C) of every member for tokens (B, T, P, D)."""
        with warnings.catch_warnings():
            # CPU SDPA (full self-attention: depth > 1, no global CLS) has no vmap rule; the per-member fallback
            # is as fast as a loop (docs/step.md), so its warning says nothing the user can act on.
            warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
            return vmap(self._call, in_dims=(0, 0, None), randomness="different")(self.params, self.buffers, tokens)

    def zero_grad(self) -> None:
        for param in self.params.values():
            param.grad = None

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the members at ``index`` (1-D long tensor), in that order; gradients are dropped."""
        self.params = {
            name: p.detach()[index.to(p.device)].requires_grad_(p.requires_grad) for name, p in self.params.items()
        }
        self.buffers = {name: b[index.to(b.device)] for name, b in self.buffers.items()}

    def subset(self, index: torch.Tensor, params: dict[str, torch.Tensor]) -> StackedProbes:
        """The members at ``index`` with ``params`` (already indexed, e.g. their best weights) as a separate stack
        to evaluate; this one is left as it is."""
        view = copy.copy(self)
        view.params = params
        view.buffers = {name: b[index.to(b.device)] for name, b in self.buffers.items()}
        view.base = copy.deepcopy(self.base)  # own train/eval mode
        return view

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A detached copy of the stacked parameters."""
        return {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def load(self, stacked: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.copy_(stacked[name])

    def member_state_dict(self, member: int, stacked: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """What ``probe.state_dict()`` of member ``member`` would hold (from ``stacked`` parameters if given), on
        the CPU."""
        params = self.params if stacked is None else stacked
        merged = {**self.buffers, **params}
        return {key: merged[key][member].detach().cpu().clone() for key in self.state_keys}
