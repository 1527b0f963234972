"""Which stored bytes a read needs: some of a cache's layers, and all tokens or only the CLS tokens.

``ShardSet.read_stored(indices, layers=None, part="all")`` reads through here. ``layers`` are positions into the
stored layers (``TokenLayout.layers``; None = all); ``part="cls"`` reads only the CLS tokens, from the shard's CLS
copy (dataset ``cls``, written when the manifest's ``storage.cls_copy`` is true) or else by slicing ``tokens``.
A read touches only the chunks of the layers it asks for (``tokens`` is chunked one clip and layer per chunk).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from step_cache.cache.layout import TokenLayout
from step_cache.errors import InputError

PARTS = ("all", "cls")


@dataclass(frozen=True)
class Selection:
    """A read's layers (positions, None: every stored layer, or the cache has no layer axis) and tokens."""

    layers: tuple[int, ...] | None
    part: str
    layered: bool  # the cache has a layer axis, so the result has one
    layer_count: int  # layers in the result
    tokens: int  # tokens per frame in the result

    def clip_shape(self, frames: int, dim: int | None) -> tuple[int, ...]:
        """One clip's shape in the result: ([L',] T, P', D), or without D for int8 scales (``dim=None``)."""
        layer_axis = (self.layer_count,) if self.layered else ()
        return (*layer_axis, frames, self.tokens, *(() if dim is None else (dim,)))


def select(layout: TokenLayout, layers: Sequence[int] | None = None, part: str = "all") -> Selection:
    """The selection of ``layers`` (positions into ``layout.layers``) and ``part``; bad values raise InputError."""
    if part not in PARTS:
        raise InputError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    if part == "cls" and layout.cls_tokens == 0:
        raise InputError("part='cls': this cache's tokens have no CLS token (cls_tokens is 0)")
    stored = layout.layer_count
    positions = None
    if layers is not None:
        positions = tuple(int(p) for p in layers)
        bad = [p for p in positions if not 0 <= p < stored]
        if not positions or bad:
            raise InputError(
                f"layers: positions into the cache's {stored} stored layer(s) "
                f"({list(layout.layers) if layout.layers is not None else 'the last block only'}) must be in "
                f"0..{stored - 1}, got {list(positions)}"
            )
        if layout.layers is None or positions == tuple(range(stored)):
            positions = None  # every layer: read whole clips
    count = stored if positions is None else len(positions)
    tokens = layout.cls_tokens if part == "cls" else layout.tokens_per_frame
    return Selection(positions, part, layout.layers is not None, count, tokens)


def read_pieces(rows: np.ndarray, positions: np.ndarray) -> list[tuple[int, int, int]]:
    """(first row, count, first position) of each stretch that is consecutive both in ``rows`` (sorted) and in
    ``positions`` (where those rows go in the result): one read each, straight into its place."""
    if len(rows) == 0:
        return []
    breaks = np.nonzero((np.diff(rows) != 1) | (np.diff(positions) != 1))[0] + 1
    starts, stops = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]])
    return [(int(rows[a]), int(b - a), int(positions[a])) for a, b in zip(starts, stops, strict=True)]


def read_rows(
    dataset: h5py.Dataset,
    pieces: list[tuple[int, int, int]],
    selection: Selection,
    cls_copy: bool,
    out: np.ndarray,
    scales: bool,
) -> None:
    """Read ``pieces`` (``read_pieces``) of ``dataset`` (``tokens``/``cls`` or their scales) as ``selection``
    asks into ``out`` (C-contiguous; its first axis indexed by position).

    Each piece goes straight into ``out`` with read_direct: h5py's fancy indexing is ~30x slower per row, and a
    temporary block gathered into place afterwards cost a copy of every byte (docs/performance.md, "Why streaming
    read below the sequential rate"). ``cls_copy``: the dataset is the CLS copy (all its tokens)."""
    tokens = slice(None) if cls_copy or selection.part == "all" else slice(0, selection.tokens)
    token_axis = (tokens,) if scales else (tokens, slice(None))
    for row, count, at in pieces:
        source, target = slice(row, row + count), np.s_[at : at + count]
        if selection.layers is None:
            dataset.read_direct(out, (source, Ellipsis, *token_axis), target)
        else:
            for j, layer in enumerate(selection.layers):
                dataset.read_direct(out, (source, layer, Ellipsis, *token_axis), (target, j))
