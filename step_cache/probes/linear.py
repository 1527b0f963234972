"""The classic linear probe: per-frame CLS tokens averaged over frames -> LayerNorm -> Linear.

Averaging over frames makes it permutation-invariant over frames by construction."""

from __future__ import annotations

import torch
from torch import nn

from step_cache.probes.layers import StackableDropout, as_dtype_of, check_probe_shape, check_tokens


class LinearProbe(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        num_classes: int,
        frames: int,
        tokens_per_frame: int,
        cls_index: int | None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_probe_shape(
            dim=dim, num_classes=num_classes, frames=frames, tokens_per_frame=tokens_per_frame, cls_index=cls_index
        )
        self.dim = dim
        # Without a per-frame CLS token in the cache, the frame's summary is the mean of its patch tokens.
        self.cls_index = cls_index
        self.norm = nn.LayerNorm(dim)
        self.head_drop = StackableDropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.dim)
        x = as_dtype_of(tokens, self.head.weight)
        pooled = x[:, :, self.cls_index].mean(dim=1) if self.cls_index is not None else x.mean(dim=(1, 2))
        return self.head(self.head_drop(self.norm(pooled)))
