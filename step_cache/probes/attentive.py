"""Attentive pooling, as in V-JEPA's frozen evaluation (written from its description, not its code): one
learnable query cross-attends (multi-head) over all T·P tokens, a residual pre-norm MLP refines it, then
LayerNorm and a linear head. There is no temporal position, so it is permutation-invariant over frames."""

from __future__ import annotations

import torch
from torch import nn

from step_cache.probes.layers import (
    Block,
    StackableDropout,
    as_dtype_of,
    check_probe_shape,
    check_tokens,
    init_probe_weights,
    resolve_num_heads,
)


class AttentiveProbe(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        num_classes: int,
        frames: int,
        tokens_per_frame: int,
        cls_index: int | None,
        num_heads: int | None = None,
        dropout: float = 0.0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        check_probe_shape(
            dim=dim, num_classes=num_classes, frames=frames, tokens_per_frame=tokens_per_frame, cls_index=cls_index
        )
        self.dim = dim
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        # The query sits outside the context, so this block is a cross-attention block (+ MLP).
        self.block = Block(dim, resolve_num_heads(dim, num_heads), mlp=True, mlp_ratio=mlp_ratio, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.head_drop = StackableDropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        init_probe_weights(self)
        nn.init.trunc_normal_(self.query, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.dim)
        x = as_dtype_of(tokens, self.head.weight)
        pooled = self.block.pool(self.query.expand(x.shape[0], -1, -1), x, include_queries=False)[:, 0]
        return self.head(self.head_drop(self.norm(pooled)))
