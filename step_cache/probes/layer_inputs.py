"""What a probe sees of several stored layers (``train-probe --layers``), built in front of any probe.

- ``concat``: the layers' tokens side by side along the channels (L x D wide); the probe is built that wide.
- ``LayerMix`` (``--layers mix``): ``gain * sum_l softmax(w)_l x_l`` per token, w learned from 0 (the uniform
  mean) and the gain from 1: ELMo's scalar mix, which none of the anchors has. L + 1 parameters, never
  weight-decayed (``optimization``: vectors are not decayed).
- ``Dinov2LinearInput`` (the linear probe with ``avgpool`` on concatenated layers): DINOv2's
  ``create_linear_input`` (dinov2/eval/linear.py): the class tokens of the n blocks concatenated, then the mean of
  the *last* block's patch tokens, ``(n + 1) x D`` per frame; the linear probe then averages frames as always.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from step_cache.interface import option
from step_cache.probes import build_probe
from step_cache.probes.layers import ProbeConfigError, as_dtype_of


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


class LayerPick(nn.Module):
    """``probe`` over one of ``layers`` layers read side by side: how members of one stack that read different
    layers share each batch (``stacking``). The layer is a one-hot buffer (stacked per member, never trained), so
    every member has the same shapes; ``x_l * 1 + 0 * others`` is ``x_l`` exactly for finite tokens."""

    def __init__(self, probe: nn.Module, layers: int, dim: int, layer: int) -> None:
        super().__init__()
        self.probe, self.layers, self.dim = probe, layers, dim
        self.register_buffer("pick", nn.functional.one_hot(torch.tensor(layer), layers).float())

    @property
    def head(self) -> nn.Module:
        return self.probe.head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.unflatten(-1, (self.layers, self.dim))
        return self.probe(torch.einsum("...ld,l->...d", x, self.pick.to(x.dtype)))


class Dinov2LinearInput(nn.Module):
    """DINOv2's linear input on concatenated layers in front of a linear probe built for one (n + 1) x D token."""

    def __init__(self, probe: nn.Module, dim: int) -> None:
        super().__init__()
        self.probe, self.dim = probe, dim

    @property
    def head(self) -> nn.Module:
        return self.probe.head

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, P, n x D), CLS first -> (B, T, 1, (n + 1) x D): each frame's n class tokens, then the mean of the
        last layer's patch tokens, in the head's dtype (cache tokens may be float16: the mean is taken in float32)."""
        x = as_dtype_of(tokens, self.probe.head.weight)
        patches = x[:, :, 1:, -self.dim :].mean(dim=2)
        return torch.cat([x[:, :, 0], patches], dim=-1).unsqueeze(2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.probe(self.features(tokens))


def build_layered_probe(
    name: str,
    *,
    layer_dim: int,
    layers: int,
    mix: bool,
    num_classes: int,
    frames: int,
    tokens_per_frame: int,
    cls_index: int | None,
    **options: Any,
) -> nn.Module:
    """Probe ``name`` over ``layers`` stored layers of width ``layer_dim`` read side by side (one layer: the probe
    itself): behind a ``LayerMix`` when ``mix``, DINOv2's linear input for the linear probe with ``avgpool``, else
    built for the concatenated width."""
    shape = {"num_classes": num_classes, "frames": frames}
    if mix:
        probe = build_probe(name, dim=layer_dim, tokens_per_frame=tokens_per_frame, cls_index=cls_index, **shape,
                            **options)  # fmt: skip
        return LayerMix(probe, layers, layer_dim)
    if layers > 1 and name == "linear" and options.get("avgpool"):
        if cls_index != 0 or tokens_per_frame < 2:
            raise ProbeConfigError(
                "avgpool=True on concatenated layers (DINOv2's linear input) needs each frame's CLS token first and "
                f"its patch tokens (got tokens_per_frame={tokens_per_frame}, cls_index={cls_index}); use "
                f"{option('tokens', 'all')}"
            )
        probe = build_probe(name, dim=(layers + 1) * layer_dim, tokens_per_frame=1, cls_index=0, **shape,
                            **{**options, "avgpool": False})  # fmt: skip
        return Dinov2LinearInput(probe, layer_dim)
    return build_probe(name, dim=layers * layer_dim, tokens_per_frame=tokens_per_frame, cls_index=cls_index, **shape,
                       **options)  # fmt: skip
