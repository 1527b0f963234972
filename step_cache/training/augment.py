"""Token-space augmentations: applied to a training batch after it reaches the device, so they cost no backbone
pass and no extra cache bytes.

- **token drop** (``token_drop`` = p): every frame of every clip keeps a random ``round((1 - p) * P)`` of its P
  patch tokens (at least one); CLS tokens are always kept. Every clip of a batch keeps the same number, so the
  batch stays one tensor. The probes pool or attend over a frame's tokens, so they take any token count.
- **reverse-and-swap** (``reverse_pairs`` = q): a clip of a class with a mirrored partner is, with probability q,
  played backwards (its frames reversed) and labelled as the partner. Right for exact mirrors (the demo's pairs,
  where the backward class *is* the forward one reversed); real near-mirrors such as opening / closing a bottle are
  not exact reverses, hence off by default.

The draws come from a generator keyed by (seed, epoch), like ``token_data.batch_plan``: an epoch's
augmentations do not depend on what ran before it, so ``--resume`` stays exact. The generator lives on the batch's
device, so a step makes no host tensor and no host-to-device copy (a CUDA generator draws other numbers than the
CPU one from the same key: a CUDA run repeats itself exactly, not a CPU run's draws). Evaluation never augments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from step_cache.interface import option
from step_cache.training.splits import DataError
from step_cache.training.token_data import TokenSelection

Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
_STREAM = 0x70CE  # keeps these draws apart from the batch plan's, which use (seed, epoch) too


class TokenAugmentation:
    """The augmentations of one run; ``for_epoch`` gives the function ``epoch_loop.train_epoch`` applies."""

    def __init__(
        self,
        *,
        token_drop: float = 0.0,
        reverse_pairs: float = 0.0,
        pairs: Sequence[tuple[int, int]] = (),
        num_classes: int = 0,
        kept_prefix: int = 0,
        patch_tokens: int = 0,
    ) -> None:
        """``kept_prefix``: leading tokens of a frame never dropped (the CLS tokens the probe sees);
        ``patch_tokens``: the droppable tokens after them."""
        if not 0 <= token_drop < 1:
            raise DataError(f"token_drop must be in [0, 1), got {token_drop}")
        if not 0 <= reverse_pairs <= 1:
            raise DataError(f"reverse_pairs must be in [0, 1], got {reverse_pairs}")
        if token_drop > 0 and patch_tokens == 0:
            raise DataError(
                f"{option('token_drop')} drops patch tokens, and this run reads none (the linear probe and "
                f"{option('tokens', 'cls')} read the CLS token only); use {option('tokens', 'all')} or "
                f"{option('tokens', 'patches')}, or leave {option('token_drop')} at 0"
            )
        if reverse_pairs > 0 and not pairs:
            raise DataError(
                f"{option('reverse_pairs')} needs mirrored class pairs, and this cache has none (see "
                f"{option('pairs', 'FILE')})"
            )
        self.token_drop, self.reverse_pairs = token_drop, reverse_pairs
        self.kept_prefix, self.patch_tokens = kept_prefix, patch_tokens
        self.keep = max(1, round((1 - token_drop) * patch_tokens))
        partner = np.full(max(num_classes, 1), -1, dtype=np.int64)
        for a, b in pairs:
            partner[a], partner[b] = b, a
        self.partner = torch.as_tensor(partner)

    def for_epoch(self, seed: int, epoch: int) -> Augment:
        key = int(np.random.SeedSequence([seed, epoch, _STREAM]).generate_state(1)[0])
        generators: dict[torch.device, torch.Generator] = {}

        def augment(tokens: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if tokens.device not in generators:  # made at the epoch's first batch, on the batch's device
                generators[tokens.device] = torch.Generator(device=tokens.device).manual_seed(key)
            return self.apply(tokens, labels, generators[tokens.device])

        return augment

    def _partner(self, device: torch.device) -> torch.Tensor:
        """The class partner table on ``device``, copied there once."""
        if self.partner.device != device:
            self.partner = self.partner.to(device)
        return self.partner

    def apply(
        self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, P, D) tokens and (B,) labels -> augmented copies (the inputs are left as they are)."""
        if self.reverse_pairs > 0:
            tokens, labels = self._reverse(tokens, labels, generator)
        if self.keep < self.patch_tokens:
            tokens = self._drop(tokens, generator)
        return tokens, labels

    def _reverse(
        self, tokens: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        draw = torch.rand(len(labels), generator=generator, device=generator.device)
        partner = self._partner(labels.device)[labels]
        swap = (partner >= 0) & (draw < self.reverse_pairs)
        tokens = torch.where(swap[:, None, None, None], tokens.flip(1), tokens)
        return tokens, torch.where(swap, partner, labels)

    def _drop(self, tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, frames = tokens.shape[:2]
        scores = torch.rand(batch, frames, self.patch_tokens, generator=generator, device=generator.device)
        kept = scores.argsort(dim=-1)[..., : self.keep].sort(dim=-1).values + self.kept_prefix
        prefix = torch.arange(self.kept_prefix, device=kept.device).expand(batch, frames, -1)
        index = torch.cat([prefix, kept], dim=-1).to(tokens.device)
        return tokens.gather(2, index[..., None].expand(-1, -1, -1, tokens.shape[-1]))


def build_augmentation(
    token_drop: float,
    reverse_pairs: float,
    pairs: Sequence[tuple[int, int]],
    num_classes: int,
    selection: TokenSelection,
) -> TokenAugmentation | None:
    """The run's augmentation (None when both are off). ``selection`` says which of the frame's tokens are CLS
    (kept) and which are patches (droppable)."""
    if token_drop == 0 and reverse_pairs == 0:
        return None
    kept_prefix = selection.cls_tokens
    return TokenAugmentation(
        token_drop=token_drop,
        reverse_pairs=reverse_pairs,
        pairs=pairs,
        num_classes=num_classes,
        kept_prefix=kept_prefix,
        patch_tokens=selection.tokens_per_frame - kept_prefix,
    )
