"""Self-attentive probe: full pre-norm transformer block(s) (multi-head self-attention + MLP) over
[CLS; all T·P tokens], classifying from the CLS output. No temporal position: permutation-invariant over frames.

STEP (step.py) is this probe with frame embeddings and without the MLP."""

from __future__ import annotations

import torch
from torch import nn

from step_cache.probes.layers import (
    Block,
    ProbeConfigError,
    StackableDropout,
    as_dtype_of,
    check_probe_shape,
    check_tokens,
    cls_readout,
    init_probe_weights,
    resolve_num_heads,
)


class SelfAttentiveProbe(nn.Module):
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
        depth: int = 1,
    ) -> None:
        super().__init__()
        check_probe_shape(
            dim=dim, num_classes=num_classes, frames=frames, tokens_per_frame=tokens_per_frame, cls_index=cls_index
        )
        if depth < 1:
            raise ProbeConfigError(f"depth={depth} must be at least 1")
        self.dim = dim
        heads = resolve_num_heads(dim, num_heads)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp=True, mlp_ratio=mlp_ratio, dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head_drop = StackableDropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        init_probe_weights(self)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.dim)
        x = as_dtype_of(tokens, self.head.weight)
        cls = cls_readout(self.blocks, self.cls_token.expand(x.shape[0], -1, -1), x)
        return self.head(self.head_drop(self.norm(cls)))
