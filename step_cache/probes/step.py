"""STEP (Self-attentive Temporal Embedding Probing, arXiv 2503.24298): the self-attentive probe with three
changes, each a switch so the paper's ablations can be reproduced (see docs/step.md):

1. ``frame_pos``: a learnable embedding E[t] ∈ R^D added to every token of frame t — the only thing that makes
   the probe sensitive to frame order.
2. ``global_cls``: one learnable CLS token for the whole clip, prepended to all T·P tokens; the classifier reads
   its output. Switched off, the probe classifies from the mean of all output tokens instead.
3. ``mlp=False``: the simplified block — our reading: the attention sub-layer alone, without the MLP, which is
   about 1/3 of a full block's parameters. ``mlp=True`` restores the full block.

With ``frame_pos=False, mlp=True`` it is the self-attentive probe (``self_attentive.py``: that preset).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from step_cache.probes.layers import (
    AttentionProbe,
    AttentionProbeArguments,
    Block,
    ProbeConfigError,
    StackableDropout,
    as_dtype_of,
    check_tokens,
    cls_readout,
    init_probe_weights,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack


class StepProbe(AttentionProbe):
    def __init__(
        self,
        *,
        frame_pos: bool = True,
        global_cls: bool = True,
        mlp: bool = False,
        depth: int = 1,
        **kwargs: Unpack[AttentionProbeArguments],
    ) -> None:
        super().__init__()
        shape, options = self.split_arguments(kwargs)
        dim, frames, dropout = shape["dim"], shape["frames"], options["dropout"]
        if depth < 1:
            raise ProbeConfigError(f"depth={depth} must be at least 1")
        self.dim = dim
        self.frames = frames
        heads = options["num_heads"]
        # Row t is added to every token of frame t.
        self.frame_pos = nn.Parameter(torch.zeros(frames, dim)) if frame_pos else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if global_cls else None
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp=mlp, mlp_ratio=options["mlp_ratio"], dropout=dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head_drop = StackableDropout(dropout)
        self.head = nn.Linear(dim, shape["num_classes"])
        init_probe_weights(self)
        # Random (not zero) so that even an untrained probe tells frame orders apart.
        for embedding in (self.frame_pos, self.cls_token):
            if embedding is not None:
                nn.init.trunc_normal_(embedding, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.dim, frames=self.frames if self.frame_pos is not None else None)
        x = as_dtype_of(tokens, self.head.weight)
        if self.cls_token is not None:
            pooled = cls_readout(self.blocks, self.cls_token.expand(x.shape[0], -1, -1), x, self.frame_pos)
        else:
            if self.frame_pos is not None:
                x = x + self.frame_pos[:, None]
            x = x.flatten(1, 2)
            for block in self.blocks:
                x = block(x)
            pooled = x.mean(dim=1)
        return self.head(self.head_drop(self.norm(pooled)))
