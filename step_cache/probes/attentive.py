"""Attentive probing as V-JEPA evaluates frozen features: its ``AttentiveClassifier`` at depth 1, forward pass
and initialisation (facebookresearch/jepa, src/models/attentive_pooler.py and src/models/utils/modules.py;
the revision and each rule: docs/step.md, "Fidelity to the anchors").

One learnable query cross-attends (multi-head) over all T·P tokens; only the tokens pass through ``norm1``.
The query plus the attention output is refined by a residual pre-norm MLP and read by a linear head, with no
final LayerNorm. There is no temporal position, so it is permutation-invariant over frames.

``output_projection=True`` applies the attention's output projection (as jepa does after its pull request 17;
the released code creates it but never applies it). This project's earlier attentive probe (written from
V-JEPA's description) also normalised the query and had a final LayerNorm; it measured no better on any
benchmark (docs/training.md), so those are gone, and runs trained with it are refused (``recorded_options``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from step_cache.probes.layers import (
    AttentionProbe,
    AttentionProbeArguments,
    Block,
    StackableDropout,
    as_dtype_of,
    check_tokens,
    init_probe_weights,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack


class AttentiveProbe(AttentionProbe):
    def __init__(self, *, output_projection: bool = False, **kwargs: Unpack[AttentionProbeArguments]) -> None:
        super().__init__()
        shape, options = self.split_arguments(kwargs)
        dim, dropout = shape["dim"], options["dropout"]
        self.dim = dim
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        # The query sits outside the context, so this block is a cross-attention block (+ MLP).
        self.block = Block(
            dim,
            options["num_heads"],
            mlp=True,
            mlp_ratio=options["mlp_ratio"],
            dropout=dropout,
            output_projection=output_projection,
        )
        self.head_drop = StackableDropout(dropout)
        self.head = nn.Linear(dim, shape["num_classes"])
        # V-JEPA's pooler init: trunc-normal (std 0.02) weights and query, zero biases, unit LayerNorms; then the
        # residual branches' last weights divided by sqrt(2 · layer_id), layer_id = 1 for the one block. The head
        # is created outside the pooler and keeps PyTorch's default Linear init.
        init_probe_weights(self)
        nn.init.trunc_normal_(self.query, std=0.02)
        with torch.no_grad():
            if self.block.attn.proj is not None:
                self.block.attn.proj.weight.div_(math.sqrt(2.0))
            self.block.mlp.fc2.weight.div_(math.sqrt(2.0))
        self.head.reset_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.dim)
        x = as_dtype_of(tokens, self.head.weight)
        query = self.query.expand(x.shape[0], -1, -1)
        # V-JEPA's CrossAttentionBlock normalises the tokens only: the query reaches the q projection raw.
        pooled = self.block.pool(query, x, include_queries=False, query_norm=False)[:, 0]
        return self.head(self.head_drop(pooled))
