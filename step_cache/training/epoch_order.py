"""The order an epoch visits its training clips: ``random`` (every clip anywhere, as always) or ``runs``.

``runs`` is the webdataset-style order for caches read from disk (streaming, larger than RAM): the training rows,
in file order, are cut into *runs* of consecutive clips of about ``RUN_BYTES`` (at most a ``MIN_RUNS``-th of a
window); the runs are shuffled (keyed by
(seed, epoch), like ``token_data.batch_plan``), laid end to end, and that stream is cut into *windows* of
``WINDOW_BATCHES`` batches whose clips are shuffled among themselves (the bounded shuffle buffer) before being cut
into batches. So a batch holds clips of up to ``WINDOW_BATCHES x batch_size / run`` runs drawn from anywhere in the
cache, and the reader meets each run as a few long contiguous reads instead of one seek per clip. The plan is a
pure function of (rows, batch size, seed, epoch, run length): in memory and streaming runs see the same batches,
and ``--resume`` stays exact. The randomness it gives up (clips of one run tend to share batches) is documented in
docs/training.md with the measured accuracy of both orders.
"""

from __future__ import annotations

import numpy as np

from step_cache.cache.shards import ShardSet

EPOCH_ORDERS = ("random", "runs")
RUN_BYTES = 64 << 20  # a run: long enough that a seek is a small part of reading it on any disk
WINDOW_BATCHES = 8  # the shuffle buffer, in batches: memory is never held for it (the plan only reorders)
MIN_RUNS = 16  # runs per window at least: a cache stored class by class still gives mixed batches


def run_clips(clip_bytes: int, run_bytes: int = RUN_BYTES) -> int:
    """Clips per run for clips of ``clip_bytes`` bytes (at least 1)."""
    return max(1, int(run_bytes // max(1, clip_bytes)))


def cache_run(shards: ShardSet, batch_size: int) -> int:
    """Clips per run for the clips of ``shards`` as stored, and at most a ``MIN_RUNS``-th of a window, so a window
    (and each of its batches) always mixes clips of at least ``MIN_RUNS`` places in the cache."""
    window = batch_size * WINDOW_BATCHES
    return min(run_clips(shards.layout.clip_bytes(shards.manifest.frames)), max(1, window // MIN_RUNS))


def runs_plan(
    rows: np.ndarray, batch_size: int, *, run: int, seed: int = 0, epoch: int = 0, window: int = WINDOW_BATCHES
) -> list[np.ndarray]:
    """The ``runs`` order's batches of ``rows`` (every row exactly once, as many batches as ``batch_plan``)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    rng = np.random.default_rng([seed, epoch])
    runs = [rows[i : i + run] for i in range(0, len(rows), max(1, run))]
    stream = np.concatenate([runs[i] for i in rng.permutation(len(runs))]) if runs else rows
    span = batch_size * window  # a multiple of batch_size, so no batch straddles two windows
    shuffled = np.concatenate([stream[i : i + span][rng.permutation(len(stream[i : i + span]))]
                               for i in range(0, len(stream), span)]) if len(stream) else stream  # fmt: skip
    return [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
