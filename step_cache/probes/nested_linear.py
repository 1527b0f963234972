"""One member of a grid of linear probes whose inputs nest (``training/stacking/nested.py``): DINOv2's linear grid
crosses ``n_last_blocks`` in {1, 4} with ``avgpool``, and every one of those heads reads a subset of the widest
input, ``[cls_-n, ..., cls_-1, patchmean_-1]`` (``create_linear_input`` in dinov2/eval/linear.py; per frame, then
averaged over frames as the linear probe does).

``NestedLinear`` is a linear head as wide as that input whose weight is multiplied in ``forward`` by a fixed 0/1
column mask (a buffer, stacked per member, never trained): the head computes exactly what the member's own narrow
``LinearProbe`` computes, up to the order of float sums, the masked columns get a zero gradient, and since they
start at 0 no optimizer moves them (SGD and AdamW's weight decay scale a 0 to 0). So members of different widths
share one shape and train as one stack that reads each batch once.
"""

from __future__ import annotations

import torch
from torch import nn

from step_cache.interface import option
from step_cache.probes.layers import ProbeConfigError, StackableDropout, as_dtype_of, check_tokens


class NestedLinear(nn.Module):
    """A linear head over the class tokens of ``layers`` stored layers of width ``layer_dim`` (tokens
    (B, T, P, layers x dim)) and, with ``patches``, the mean patch token of the last one, reading only the columns
    where ``mask`` (((layers + patches) x dim,) of 0/1) is 1."""

    def __init__(
        self,
        *,
        layer_dim: int,
        layers: int,
        patches: bool,
        mask: torch.Tensor,
        num_classes: int,
        tokens_per_frame: int,
        cls_index: int | None,
        dropout: float = 0.0,
        leading: int = 0,
    ) -> None:
        super().__init__()
        width = (layers + int(patches)) * layer_dim
        if mask.shape != (width,):
            raise ProbeConfigError(f"nested linear head: a mask of shape {tuple(mask.shape)}, expected ({width},)")
        if patches and (cls_index is None or tokens_per_frame < 2):
            raise ProbeConfigError(
                "avgpool=True concatenates the CLS token with the mean of the patch tokens: it needs both in the "
                f"probe's tokens (got tokens_per_frame={tokens_per_frame}, cls_index={cls_index}); use "
                f"{option('tokens', 'all')}"
            )
        if leading and (leading != layers - 1 or cls_index != 0):
            raise ProbeConfigError(
                f"nested linear head: {leading} leading class tokens need {leading + 1} layers and the last layer's "
                f"CLS token first (got {layers} layers, cls_index={cls_index})"
            )
        self.layer_dim, self.layers, self.patches, self.cls_index = layer_dim, layers, bool(patches), cls_index
        self.leading = leading
        self.head_drop = StackableDropout(dropout)
        self.head = nn.Linear(width, num_classes)
        nn.init.zeros_(self.head.weight)  # the member's own columns are copied in (``training/stacking/nested.py``)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("mask", mask.float(), persistent=False)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, P, layers x dim) -> (B, width): the frames' mean class tokens of every layer, then (``patches``)
        the mean of the last layer's patch tokens over frames and patches, as ``LinearProbe`` pools them. With
        ``leading``, tokens are (B, T, leading + P, dim): the earlier layers' class tokens, then the last layer's
        tokens, CLS first (``training/stacking/nested_tokens.py``)."""
        if self.leading:
            check_tokens(tokens, self.layer_dim)
            x = as_dtype_of(tokens, self.head.weight)
            classes = x[:, :, : self.leading + 1].flatten(-2).mean(dim=1)  # layer after layer, as concatenated
            return torch.cat([classes, x[:, :, self.leading + 1 :].mean(dim=(1, 2))], dim=-1)
        check_tokens(tokens, self.layers * self.layer_dim)
        x = as_dtype_of(tokens, self.head.weight)
        if self.cls_index is None:  # no CLS token stored: the mean of all tokens, as LinearProbe does
            return x.mean(dim=(1, 2))
        c = self.cls_index  # a Python int: plain slices, the same under vmap
        pooled = x[:, :, c].mean(dim=1)
        if not self.patches:
            return pooled
        last = x[..., -self.layer_dim :]
        others = last[:, :, c + 1 :] if c == 0 else torch.cat([last[:, :, :c], last[:, :, c + 1 :]], dim=2)
        return torch.cat([pooled, others.mean(dim=(1, 2))], dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weight = self.head.weight * self.mask  # masked columns: no contribution, zero gradient
        return nn.functional.linear(self.head_drop(self.features(tokens)), weight, self.head.bias)
