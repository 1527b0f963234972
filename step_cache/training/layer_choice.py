"""Which of a cache's stored layers a probe reads (``train-probe --layers``), and how several are combined.

- ``last`` (default): a cache without a layer axis as it is; a cache with one (``extract --layers``), its last
  stored block.
- ``B`` (a 0-based block index, as ``extract --layers`` counts them): that stored block.
- ``concat:a,b,...`` or ``concat:lastN``: those stored blocks concatenated along the channels, in block order, so
  each token has N x D channels. With the linear probe on CLS tokens this is DINOv2's linear input for
  ``n_last_blocks`` (``create_linear_input`` in dinov2/eval/linear.py: the class tokens of the last n blocks
  concatenated).
- ``tokens:a,b,...`` or ``tokens:lastN``: those blocks' tokens one after the other along the token axis, so a
  frame has N x P tokens of width D (the first layer's first): V-JEPA 2's use of ``out_layers`` in its frozen
  evaluation (evals/video_classification_frozen/modelcustom/vit_encoder_multiclip_multilevel.py, ``ClipAggregation``:
  ``torch.cat(outputs, dim=1)`` over the layers' normalised outputs, the probe's ``embed_dim`` unchanged), whose
  attentive probe then attends over every layer's tokens at once.
- ``mix`` (every stored layer), ``mix:a,b,...`` or ``mix:lastN``: a learned softmax-weighted sum of those layers
  with a learned gain (``probes.layer_inputs``), read as ``concat`` reads them; the probe sees D channels.

Only the chosen layers are read from disk (``ShardSet.read_stored(..., layers=positions)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from step_cache.cache.layout import TokenLayout
from step_cache.interface import from_command_line, option
from step_cache.training.splits import DataError

if TYPE_CHECKING:  # torch is not needed to parse a spec (the command line groups runs before loading it)
    import torch

LAST = "last"
CONCAT = "concat:"
TOKENS = "tokens:"
MIX = "mix"


def along_tokens(spec: str) -> bool:
    """Whether ``spec`` puts the layers' tokens one after the other (``tokens:``) rather than side by side."""
    return str(spec).replace(" ", "").lower().startswith(TOKENS)


def is_mix(spec: str) -> bool:
    """Whether ``spec`` asks for a learned mix of layers rather than their concatenation."""
    text = str(spec).replace(" ", "").lower()
    return text == MIX or text.startswith(MIX + ":")


def layer_positions(spec: str, layout: TokenLayout, depth: int | None = None) -> tuple[int, ...] | None:
    """Positions into ``layout.layers`` that ``spec`` reads (concatenated when several); None for a cache without a
    layer axis read as it is: ``last``, or its own block index where the backbone's ``depth`` is known
    (``backbone_depth``). DataError names ``--layers`` and the problem."""
    text = str(spec).replace(" ", "").lower()
    stored = layout.layers
    if stored is None:
        if text == LAST or (depth is not None and text.lstrip("-").isdigit() and int(text) in (depth - 1, -1)):
            return None
        own = "" if depth is None else f" (block {depth - 1}, the last of the backbone's {depth})"
        several = "extract --layers" if from_command_line() else "extract(layers=...)"
        raise DataError(
            f"{option('layers', spec)}: this cache holds the last block only{own}, with no layer axis; use "
            f"{option('layers', 'last')}, or extract several ({several})"
        )
    if text == LAST:
        return (len(stored) - 1,)
    if text == MIX:
        return tuple(range(len(stored)))
    concat = text.startswith((CONCAT, TOKENS)) or is_mix(text)
    body = text.split(":", 1)[1] if concat else text
    if concat and body.startswith("last") and body[4:].isdigit():
        count = int(body[4:])
        if not 1 <= count <= len(stored):
            raise DataError(f"{option('layers', spec)}: the cache stores {len(stored)} layers {list(stored)}")
        return tuple(range(len(stored) - count, len(stored)))
    try:
        blocks = [int(part) for part in body.split(",")]
    except ValueError:
        raise DataError(
            f"{option('layers', spec)}: expected last, a block index, or concat:, tokens: or mix: with a,b,... or "
            f"lastN (the cache stores blocks {list(stored)})"
        ) from None
    if len(blocks) > 1 and not concat:
        raise DataError(f"{option('layers', spec)}: several blocks are read as concat:{body} (or mixed: mix:{body})")
    missing = [block for block in blocks if block not in stored]
    if missing or len(set(blocks)) != len(blocks):
        raise DataError(
            f"{option('layers', spec)}: block(s) {missing or blocks} not stored once each; the cache stores "
            f"{list(stored)}"
        )
    return tuple(sorted(stored.index(block) for block in blocks))


def backbone_depth(extraction: dict) -> int | None:
    """Blocks of the ViT a cache was extracted with (built on the meta device: no weights, no memory); None when it
    cannot be told (not a timm ViT, an unknown model)."""
    backbone = extraction.get("backbone", {})
    try:
        import timm
        import torch

        with torch.device("meta"):
            model = timm.create_model(backbone["timm_model"], pretrained=False, **backbone.get("kwargs", {}))
        return len(model.blocks)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):  # timm cannot build it, or no blocks
        return None


def one_layer(spec: str) -> bool:
    """Whether ``spec`` reads one stored layer as it is (``last`` or a block index): such runs differ only in which
    layer they read, so sweeps stack them together over the union of their layers (``stacking.grouping``)."""
    text = str(spec).replace(" ", "").lower()
    return text == LAST or text.lstrip("-").isdigit()


def union_spec(specs: list[str], layout: TokenLayout) -> str:
    """``concat:`` of every stored block that one of ``specs`` (each ``one_layer``) reads, in block order: what a
    stack of those runs reads once per batch."""
    positions = sorted({p for spec in specs for p in layer_positions(spec, layout) or (0,)})
    if layout.layers is None:
        return LAST
    return CONCAT + ",".join(str(layout.layers[p]) for p in positions)


def merge_layers(tokens: torch.Tensor, by_tokens: bool) -> torch.Tensor:
    """A batch read with a layer axis, (B, L, T, P, D), as the probe sees it: one after the other along the tokens
    (``tokens:``) or side by side along the channels (``concat:``, ``mix``)."""
    return concat_tokens(tokens) if by_tokens else concat_channels(tokens)


def concat_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, T, P, D) -> (B, T, L x P, D): each frame's tokens of every layer, layer after layer."""
    batch, layers, frames, per_frame, dim = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, frames, layers * per_frame, dim)


def concat_channels(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L, T, P, D) -> (B, T, P, L x D): each token's layers side by side, in the order read."""
    batch, layers, frames, per_frame, dim = tokens.shape
    return tokens.permute(0, 2, 3, 1, 4).reshape(batch, frames, per_frame, layers * dim)
