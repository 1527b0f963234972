"""Augmented views (``extract --views N``) in training: every epoch, each training clip contributes one of its views.

A cache with views stores, besides every clip's clean view (``ShardSet.views`` 0), N augmented views of each
*training* video's clips (rows with the same video key and clip index, views 1..N). Those rows are never clips of
their own: splits, schedules, validation, test, ``evaluate`` and ``predict`` count and score clean views only
(``clean_rows``), so a run's val and test figures mean what they mean on a cache without views.

Training draws, per epoch and per training clip, one of its 1 + N views uniformly (the clean one included) from a
generator keyed by (seed, epoch), like ``token_data.batch_plan``: an epoch's draws do not depend on the epochs
before it (``--resume`` stays exact), and the drawn rows then take the places of their clean clips in the
epoch's shuffled batch plan. So an epoch still has one row per training clip (the same number of steps), and with
``views="off"``, or on a cache without views, the plan is exactly the clean one.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from step_cache.cache.shards import ShardSet
from step_cache.errors import InputError
from step_cache.training.epoch_order import cache_run, runs_plan
from step_cache.training.token_data import batch_plan

log = logging.getLogger(__name__)

VIEW_MODES = ("on", "off")
_STREAM = 0x71E5  # keeps these draws apart from the batch plan's and the token augmentations', all keyed by seed


def clean_rows(shards: ShardSet) -> np.ndarray:
    """Boolean mask over a ShardSet's rows: True for clean views, the rows that are clips of their own."""
    return np.asarray(shards.views) == 0


class ViewTable:
    """The rows of every training clip's views: ``table[i]`` lists the rows of ``clips[i]``'s views, the clean
    row first (-1 pads clips with fewer views); ``enabled`` says whether training draws from them."""

    def __init__(self, shards: ShardSet, clips: np.ndarray, enabled: bool = True) -> None:
        self.clips = np.asarray(clips, dtype=np.int64)
        keys = zip(shards.videos[self.clips], shards.clip_index[self.clips], strict=True)
        position = {(str(video), int(clip)): i for i, (video, clip) in enumerate(keys)}
        augmented = np.nonzero((np.asarray(shards.views) > 0) & (shards.labels >= 0))[0]
        owner = np.array(
            [position.get((str(shards.videos[r]), int(shards.clip_index[r])), -1) for r in augmented], dtype=np.int64
        )
        augmented, owner = augmented[owner >= 0], owner[owner >= 0]  # views of clips this run does not train on
        order = np.lexsort((shards.views[augmented], owner))  # per clip, by view number
        augmented, owner = augmented[order], owner[order]
        self.counts = 1 + np.bincount(owner, minlength=len(self.clips)).astype(np.int64)  # views per clip, clean incl.
        self.table = np.full((len(self.clips), int(self.counts.max(initial=1))), -1, dtype=np.int64)
        self.table[:, 0] = self.clips
        starts = np.concatenate([[0], np.cumsum(self.counts - 1)])[:-1]
        self.table[owner, 1 + np.arange(len(owner)) - starts[owner]] = augmented
        self.available = int(self.counts.max(initial=1)) - 1  # augmented views of the best-covered clip
        self.enabled = enabled and self.available > 0

    @property
    def augmented_rows(self) -> np.ndarray:
        """The rows training may draw besides the clean clips (none when disabled): what must be loaded too."""
        if not self.enabled:
            return np.zeros(0, dtype=np.int64)
        rows = self.table[:, 1:]
        return np.sort(rows[rows >= 0])

    def draw(self, seed: int, epoch: int) -> np.ndarray:
        """One row per clip (aligned with ``clips``): a view drawn uniformly from the clip's 1 + N, keyed by
        (seed, epoch); the clean clips themselves when disabled."""
        if not self.enabled:
            return self.clips
        rng = np.random.default_rng([seed, epoch, _STREAM])
        choice = np.minimum((rng.random(len(self.clips)) * self.counts).astype(np.int64), self.counts - 1)
        return self.table[np.arange(len(self.clips)), choice]

    def record(self, requested: str) -> dict[str, Any]:
        """What ``config.json``'s data record says of the views."""
        return {
            "views_per_clip": self.available,
            "training_views": int((self.table[:, 1:] >= 0).sum()),
            "views_used": self.enabled,
            "views_requested": requested,
        }


def view_table(shards: ShardSet, clips: np.ndarray, mode: str) -> ViewTable:
    """The views of the training ``clips`` for ``views=mode`` ("on" or "off"); "on" on a cache without views
    trains on clean clips (not an error; a debug message, since that is every cache extracted without --views)."""
    if mode not in VIEW_MODES:
        raise InputError(f"views must be one of {', '.join(VIEW_MODES)}, got {mode!r}")
    table = ViewTable(shards, clips, enabled=mode == "on")
    if mode == "on" and not table.enabled:
        log.debug("the cache has no augmented views of the training clips: training uses the clean clips")
    elif mode == "off" and table.available:
        log.info("views off: training on the clean clips only (the cache holds %d views per clip)", table.available)
    elif table.enabled:
        log.info(
            "training on augmented views: each epoch one of up to %d views per clip (clean included)",
            table.available + 1,
        )
    return table


def epoch_plan(
    table: ViewTable, batch_size: int, seed: int, epoch: int, order: str = "random", shards: ShardSet | None = None
) -> list[np.ndarray]:
    """An epoch's training batches: ``batch_plan`` of the clean clips (shuffled by (seed, epoch)) with each clip
    replaced by its view drawn for the epoch; ``order="runs"``: those rows in ``epoch_order.runs_plan``'s order
    (runs of consecutive rows of ``shards``, ``epoch_order.cache_run``)."""
    if order == "runs":
        run = 1 if shards is None else cache_run(shards, batch_size)
        return runs_plan(table.draw(seed, epoch), batch_size, run=run, seed=seed, epoch=epoch)
    return batch_plan(table.draw(seed, epoch), batch_size, shuffle=True, seed=seed, epoch=epoch)
