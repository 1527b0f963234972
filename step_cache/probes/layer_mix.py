"""A learned scalar mix of a cache's layers in front of any probe (``train-probe --layers mix``).

The probe sees ``gain * sum_l softmax(w)_l x_l`` for each token: the L stored layers' tokens (read side by side
along the channels, as ``concat`` reads them) weighted by a softmax over L learned logits (initialised to 0: the
uniform mean) and scaled by one learned gain (initialised to 1). That is ELMo's scalar mix; none of the anchors has
one. L + 1 parameters, which take no weight decay (``optimization``: vectors and scalars are never decayed).
"""

from __future__ import annotations

import torch
from torch import nn


class LayerMix(nn.Module):
    """``probe`` over the learned mix of ``layers`` layers of width ``dim`` (tokens (B, T, P, layers x dim))."""

    def __init__(self, probe: nn.Module, layers: int, dim: int) -> None:
        super().__init__()
        self.probe = probe
        self.layers, self.dim = layers, dim
        self.mix_logits = nn.Parameter(torch.zeros(layers))
        self.mix_gain = nn.Parameter(torch.ones(1))  # (1,), not a 0-d scalar: stacked members clip per parameter row

    @property
    def head(self) -> nn.Module:
        """The probe's classifier (``count_parameters(exclude_head=True)`` reads it)."""
        return self.probe.head

    def mixed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, P, L x D) -> (B, T, P, D): the weighted sum of each token's layers, times the gain."""
        if tokens.shape[-1] != self.layers * self.dim:
            raise ValueError(f"layer mix: tokens of width {tokens.shape[-1]}, expected {self.layers} x {self.dim}")
        x = tokens.unflatten(-1, (self.layers, self.dim)).to(self.mix_logits.dtype)
        weights = torch.softmax(self.mix_logits, dim=0)
        return self.mix_gain * torch.einsum("...ld,l->...d", x, weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.probe(self.mixed(tokens))


def with_layer_mix(probe: nn.Module, layers: int, dim: int, mix: bool) -> nn.Module:
    """``probe`` behind a ``LayerMix`` of ``layers`` layers when ``mix``, else as it is."""
    return LayerMix(probe, layers, dim) if mix else probe
