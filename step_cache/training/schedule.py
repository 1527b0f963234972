"""The length of a run: the automatic epochs and batch size (``epochs`` / ``batch_size`` left to "auto") and the
optimizer steps they give. Plain arithmetic, without torch: ``TrainConfig`` resolves its schedule with it."""

from __future__ import annotations

import math

# The automatic schedule (``epochs`` / ``batch_size`` left to "auto"): a schedule counted in epochs does not
# transfer across dataset sizes, so the batch shrinks on small sets and the epochs grow until the run has at least
# AUTO_MIN_STEPS optimizer steps. Why, and the measurements behind the constants: docs/training.md, "Default
# schedule".
AUTO_BATCHES_PER_EPOCH = 16  # the auto batch aims at this many batches per epoch...
# ...as a power of two in this range. The floor is 16, not 8: measured in docs/training.md, "The smallest automatic
# batch is 16".
AUTO_BATCH_RANGE = (16, 64)
AUTO_MIN_EPOCHS = 30
AUTO_MIN_STEPS = 1500
AUTO_MAX_EPOCHS = 1000


def auto_batch_size(train_clips: int) -> int:
    """The largest power of two giving at least ``AUTO_BATCHES_PER_EPOCH`` batches, clamped to ``AUTO_BATCH_RANGE``."""
    low, high = AUTO_BATCH_RANGE
    target = max(1, train_clips // AUTO_BATCHES_PER_EPOCH)
    return int(min(high, max(low, 2 ** math.floor(math.log2(target)))))


def auto_epochs(train_clips: int, batch_size: int) -> int:
    """At least ``AUTO_MIN_EPOCHS``, and enough epochs for ``AUTO_MIN_STEPS`` optimizer steps (at most
    ``AUTO_MAX_EPOCHS``)."""
    per_epoch = math.ceil(train_clips / batch_size)
    return int(min(AUTO_MAX_EPOCHS, max(AUTO_MIN_EPOCHS, math.ceil(AUTO_MIN_STEPS / per_epoch))))


def resolve_schedule(epochs: int | None, batch_size: int | None, train_clips: int) -> tuple[int, int]:
    """(epochs, batch size) of a run: the given values, or the automatic ones where ``None``."""
    batch = batch_size if batch_size is not None else auto_batch_size(train_clips)
    return (epochs if epochs is not None else auto_epochs(train_clips, batch)), batch


def schedule_steps(epochs: int, train_clips: int, batch_size: int, warmup_epochs: float) -> tuple[int, int]:
    """(total optimizer steps, warm-up steps) of a run: one step per batch of ``batch_size`` of the
    ``train_clips``, warm-up epochs rounded to whole steps."""
    per_epoch = math.ceil(train_clips / batch_size)
    return epochs * per_epoch, round(warmup_epochs * per_epoch)
