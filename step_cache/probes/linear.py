"""The classic linear probe, after DINOv2's linear evaluation head (facebookresearch/dinov2, dinov2/eval/linear.py:
``LinearClassifier`` over ``create_linear_input``; docs/step.md, "Fidelity to the anchors").

Each frame's feature is its CLS token, with ``avgpool`` concatenated with the mean of its other (patch) tokens
(DINOv2's ``use_avgpool``); the frame features are averaged over frames, which makes the probe
permutation-invariant over frames by construction, then optionally LayerNormed (``layer_norm``, this project's
addition: DINOv2 has none) and read by one Linear layer initialised as DINOv2's (normal, std 0.01; zero bias)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from step_cache.interface import option
from step_cache.probes.layers import (
    ProbeConfigError,
    ProbeShape,
    StackableDropout,
    as_dtype_of,
    check_probe_shape,
    check_tokens,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack


class LinearProbe(nn.Module):
    def __init__(
        self,
        *,
        dropout: float = 0.0,
        avgpool: bool = False,
        layer_norm: bool = True,
        **shape: Unpack[ProbeShape],
    ) -> None:
        super().__init__()
        shape = check_probe_shape(shape)
        dim, tokens_per_frame, cls_index = shape["dim"], shape["tokens_per_frame"], shape["cls_index"]
        if avgpool and (cls_index is None or tokens_per_frame < 2):
            raise ProbeConfigError(
                "avgpool=True concatenates the CLS token with the mean of the patch tokens: it needs both in the "
                f"probe's tokens (got tokens_per_frame={tokens_per_frame}, cls_index={cls_index}); use "
                f"{option('tokens', 'all')}"
            )
        self.dim = dim
        # Without a per-frame CLS token in the cache, the frame's summary is the mean of its patch tokens.
        self.cls_index = cls_index
        self.avgpool = bool(avgpool)
        width = 2 * dim if avgpool else dim
        self.norm = nn.LayerNorm(width) if layer_norm else None
        self.head_drop = StackableDropout(dropout)
        self.head = nn.Linear(width, shape["num_classes"])
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tokens(tokens, self.dim)
        x = as_dtype_of(tokens, self.head.weight)
        if self.cls_index is None:
            pooled = x.mean(dim=(1, 2))
        else:
            pooled = x[:, :, self.cls_index].mean(dim=1)
            if self.avgpool:
                c = self.cls_index  # a Python int: plain slices, the same under vmap
                others = x[:, :, c + 1 :] if c == 0 else torch.cat([x[:, :, :c], x[:, :, c + 1 :]], dim=2)
                pooled = torch.cat([pooled, others.mean(dim=(1, 2))], dim=-1)
        if self.norm is not None:
            pooled = self.norm(pooled)
        return self.head(self.head_drop(pooled))
