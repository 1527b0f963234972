"""What a nested stack with ``avgpool`` members reads (``nested.py``): the class tokens of its N layers and every
token of the last one only, rather than every token of the N layers (N x the bytes of the patch tokens, which only
the last layer's mean needs).

Two token sources of the run's ``DataCache`` (the CLS-only read of ``concat:lastN``, the read of ``last``), one
batch of each for the same clips, merged along the tokens: each frame's ``N - 1`` earlier class tokens, then the
last layer's tokens, ``(B, T, N - 1 + P, D)``. ``NestedLinear(leading=N - 1)`` reads that layout. Its selection
counts the leading class tokens as CLS tokens, so ``--token-drop`` drops among the last layer's patch tokens only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from step_cache.training.token_data import Batch

if TYPE_CHECKING:
    from step_cache.training.stacking.shared_data import TrainingData


class NestedTokens:
    """A token source: batches of ``classes`` (CLS-only, N layers side by side: (B, T, c, N x D)) and ``last``
    (every token of the last layer: (B, T, P, D)) merged into (B, T, N - 1 + P, D)."""

    def __init__(self, classes: TrainingData, last: TrainingData, blocks: int) -> None:
        self.classes, self.last, self.blocks = classes.source, last.source, blocks
        self.mode = self.last.mode
        self.dim = last.shards.layout.dim

    def batches(self, plan: Sequence[np.ndarray]) -> Iterator[Batch]:
        for (classes, labels, clips), (last, _, same) in zip(
            self.classes.batches(plan), self.last.batches(plan), strict=True
        ):
            if not np.array_equal(clips, same):  # both follow the one plan
                raise RuntimeError("nested token sources gave different clips for one batch")
            earlier = classes[:, :, 0, : (self.blocks - 1) * self.dim].unflatten(-1, (self.blocks - 1, self.dim))
            yield torch.cat([earlier.to(last.device, last.dtype), last], dim=2), labels, clips

    def close(self) -> None:
        """Nothing of its own: the two sources belong to the ``DataCache``, which closes them."""
