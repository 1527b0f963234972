"""Which of a cache's stored layers a probe reads (``train-probe --layers``), and how several are combined.

- ``last`` (default): a cache without a layer axis as it is; a cache with one (``extract --layers``), its last
  stored block.
- ``B`` (a 0-based block index, as ``extract --layers`` counts them): that stored block.
- ``concat:a,b,...`` or ``concat:lastN``: those stored blocks concatenated along the channels, in block order, so
  each token has N x D channels. With the linear probe on CLS tokens this is DINOv2's linear input for
  ``n_last_blocks`` (``create_linear_input`` in dinov2/eval/linear.py: the class tokens of the last n blocks
  concatenated); V-JEPA 2's multi-layer frozen evaluation likewise hands the probe each token's chosen
  ``out_layers`` outputs (each through the final norm) side by side.

Only the chosen layers are read from disk (``ShardSet.read_stored(..., layers=positions)``).
"""

from __future__ import annotations

import torch

from step_cache.cache.layout import TokenLayout
from step_cache.training.splits import DataError

LAST = "last"
CONCAT = "concat:"


def layer_positions(spec: str, layout: TokenLayout) -> tuple[int, ...] | None:
    """Positions into ``layout.layers`` that ``spec`` reads (concatenated when several); None for a cache without a
    layer axis read as it is. DataError names ``--layers`` and the problem."""
    text = str(spec).replace(" ", "").lower()
    stored = layout.layers
    if stored is None:
        if text == LAST:
            return None
        raise DataError(
            f"--layers {spec}: this cache holds the last block only (no layer axis); use --layers last, or extract "
            "several with extract --layers"
        )
    if text == LAST:
        return (len(stored) - 1,)
    concat = text.startswith(CONCAT)
    body = text[len(CONCAT) :] if concat else text
    if concat and body.startswith("last") and body[4:].isdigit():
        count = int(body[4:])
        if not 1 <= count <= len(stored):
            raise DataError(f"--layers {spec}: the cache stores {len(stored)} layers {list(stored)}")
        return tuple(range(len(stored) - count, len(stored)))
    try:
        blocks = [int(part) for part in body.split(",")]
    except ValueError:
        raise DataError(
            f"--layers {spec}: expected last, a block index, concat:a,b,... or concat:lastN (the cache stores "
            f"blocks {list(stored)})"
        ) from None
    if len(blocks) > 1 and not concat:
        raise DataError(f"--layers {spec}: several blocks are read as concat:{body}")
    missing = [block for block in blocks if block not in stored]
    if missing or len(set(blocks)) != len(blocks):
        raise DataError(
            f"--layers {spec}: block(s) {missing or blocks} not stored once each; the cache stores {list(stored)}"
        )
    return tuple(sorted(stored.index(block) for block in blocks))


def concat_channels(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, T, P, D) -> (B, T, P, L x D): each token's layers side by side, in the order read."""
    batch, layers, frames, per_frame, dim = tokens.shape
    return tokens.permute(0, 2, 3, 1, 4).reshape(batch, frames, per_frame, layers * dim)
