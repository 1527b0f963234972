"""Attentive probing as V-JEPA and V-JEPA 2 evaluate frozen features: their ``AttentiveClassifier``, forward
pass and initialisation (facebookresearch/jepa and facebookresearch/vjepa2, src/models/attentive_pooler.py and
src/models/utils/modules.py; the revisions and each rule: docs/step.md, "Fidelity to the anchors").

One learnable query cross-attends (multi-head) over all T·P tokens; only the tokens pass through ``norm1``.
The query plus the attention output is refined by a residual pre-norm MLP and read by a linear head, with no
final LayerNorm. There is no temporal position, so it is permutation-invariant over frames.

``depth`` N > 1 is V-JEPA 2's ``num_probe_blocks``: its pooler first runs N − 1 pre-norm self-attention blocks
(norm1 → qkv → attention → proj, residual; norm2 → MLP, residual) over the T·P tokens, then the cross-attention
block. (jepa's pooler would apply its extra blocks to the query after the cross-attention; its initialisation of
them fails, so no V-JEPA probe deeper than 1 exists.) Depth 1 is the same function in both.

``output_projection=True`` applies the attention's output projection (as jepa does after its pull request 17;
the released code creates it but never applies it, and V-JEPA 2 does not create it). This project's earlier
attentive probe (written from V-JEPA's description) also normalised the query and had a final LayerNorm; it
measured no better on any benchmark (docs/training.md), so those are gone, and runs trained with it are refused
(``recorded_options``)."""

from __future__ import annotations

import math
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
    init_probe_weights,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack


class AttentiveProbe(AttentionProbe):
    def __init__(
        self, *, output_projection: bool = False, depth: int = 1, **kwargs: Unpack[AttentionProbeArguments]
    ) -> None:
        super().__init__()
        shape, options = self.split_arguments(kwargs)
        dim, dropout, heads = shape["dim"], options["dropout"], options["num_heads"]
        if depth < 1:
            raise ProbeConfigError(f"depth={depth} must be at least 1")
        self.dim = dim
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        # V-JEPA 2's pooler.blocks: full self-attention blocks over the tokens (none at depth 1).
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp=True, mlp_ratio=options["mlp_ratio"], dropout=dropout) for _ in range(depth - 1)
        )
        # The query sits outside the context, so this block is a cross-attention block (+ MLP).
        self.block = Block(
            dim,
            heads,
            mlp=True,
            mlp_ratio=options["mlp_ratio"],
            dropout=dropout,
            output_projection=output_projection,
        )
        self.head_drop = StackableDropout(dropout)
        self.head = nn.Linear(dim, shape["num_classes"])
        # V-JEPA's pooler init: trunc-normal (std 0.02) weights and query, zero biases, unit LayerNorms; then the
        # residual branches' last weights divided by sqrt(2 · layer_id). Self-attention block i has layer_id i + 1;
        # V-JEPA 2's cross-attention block reuses the last block's, depth - 1 (1 at depth 1, as in jepa). The head
        # is created outside the pooler and keeps PyTorch's default Linear init.
        init_probe_weights(self)
        nn.init.trunc_normal_(self.query, std=0.02)
        with torch.no_grad():
            for layer_id, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))
            cross_scale = math.sqrt(2.0 * max(1, depth - 1))
            if self.block.attn.proj is not None:
                self.block.attn.proj.weight.div_(cross_scale)
            self.block.mlp.fc2.weight.div_(cross_scale)
        self.head.reset_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.dim)
        x = as_dtype_of(tokens, self.head.weight)
        if len(self.blocks):
            sequence = x.flatten(1, 2)  # (B, T·P, D), time-major as V-JEPA flattens its tokens
            for block in self.blocks:
                sequence = block(sequence)
            x = sequence[:, None]  # (B, 1, T·P, D): the cross-attention reads every token alike
        query = self.query.expand(x.shape[0], -1, -1)
        # V-JEPA's CrossAttentionBlock normalises the tokens only: the query reaches the q projection raw.
        pooled = self.block.pool(query, x, include_queries=False, query_norm=False)[:, 0]
        return self.head(self.head_drop(pooled))
