"""Tokens of several backbone blocks (``extract --layers``), through timm's own ``forward_intermediates``.

timm's ``forward_intermediates(indices, norm=True)`` applies the model's final norm to each chosen block's output,
as DINOv2's ``get_intermediate_layers(norm=True)`` does (its last entry equals ``forward_features``). With
``return_prefix_tokens=True`` it hands back each block's patch tokens and its prefix tokens (CLS first, then any
registers); this module puts them back together in ``forward_features``' order, so each layer goes through the same
CLS-first, registers-dropped, patch-pooled layout as the last layer (``Backbone.forward_tokens``).
"""

from __future__ import annotations

import torch

from step_cache.cache.layers import parse_blocks
from step_cache.errors import InputError
from step_cache.interface import option


def model_blocks(model: torch.nn.Module, spec: str) -> tuple[int, ...] | None:
    """The blocks ``spec`` names for ``model`` (``step_cache.cache.layers``); None for ``last``. A model without
    timm's ``forward_intermediates`` over ``blocks`` (e.g. a CNN) takes only ``last``."""
    blocks = getattr(model, "blocks", None)
    if not hasattr(model, "forward_intermediates") or not isinstance(blocks, torch.nn.Sequential):
        if str(spec).strip().lower() == "last":
            return None
        raise InputError(f"{option('layers', spec)}: {type(model).__name__} has no ViT blocks to take layers from")
    return parse_blocks(spec, len(blocks))


def intermediate_features(model: torch.nn.Module, frames: torch.Tensor, blocks: tuple[int, ...]) -> list[torch.Tensor]:
    """Per block in ``blocks``: (B, prefix + patches, D) final-normalised tokens, laid out as ``forward_features``
    returns the last block's."""
    outputs = model.forward_intermediates(
        frames,
        indices=list(blocks),
        norm=True,
        output_fmt="NLC",
        intermediates_only=True,
        return_prefix_tokens=True,
    )
    if int(getattr(model, "num_prefix_tokens", 0)) == 0:  # timm hands back the patch tokens alone
        return list(outputs)
    return [torch.cat([prefix, patches], dim=1) for patches, prefix in outputs]
