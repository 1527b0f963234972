"""Train / val / test selection of cached clips.

The shards' ``split`` column decides: ``test`` clips are held out, ``val`` clips validate, ``train`` and unassigned
("") clips train. When the cache has no ``val`` clip, a fraction of the training *videos* is held out instead,
stratified by class and deterministic for a seed. Clips are grouped by source video file (temporal clips and
segments of one file stay on one side), and files by group (``datasets/groups.py``: a UCF101 ``v_X_gNN`` group, an
HMDB51 source movie, a Drive&Act participant ``vp<N>``, the same-named files of the classes of a mirrored pair — a
clip and its reversed copy), so no footage, and no actor and scene of a UCF101 group or subject of Drive&Act, leaks
between train and val (``HOLDOUT_GROUPS``; runs recorded before groups held out single files, ``HOLDOUT_FILES``,
which ``evaluate`` and ``--resume`` reproduce for them). Unlabelled clips are never
selected, nor are augmented views (``views`` > 0, ``extract --views``): they are not clips of their own, so every
split, and the held-out videos, are those of the same cache without views (training.views draws them).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from step_cache.catalog import source_video
from step_cache.datasets.groups import pool_small_mixed, video_groups
from step_cache.errors import StepCacheError

if TYPE_CHECKING:
    from step_cache.cache.shards import ShardSet


# The val hold-out rules (config.json ``data.holdout``): groups held out whole (``datasets/groups.py``; v2: an
# HMDB51 source movie across its actions, v1: its clips of one action and tags), or each source file alone, the rule
# of runs recorded before groups (``run_record.recorded_holdout``).
HOLDOUT_GROUPS = "groups-v2"
HOLDOUT_GROUPS_V1 = "groups-v1"
HOLDOUT_FILES = "files"
HOLDOUT_RULES = (HOLDOUT_GROUPS, HOLDOUT_GROUPS_V1, HOLDOUT_FILES)


class DataError(StepCacheError, ValueError):
    """The cache cannot provide the clips a run needs (no training clips, no validation clips, ...)."""


@dataclass(frozen=True)
class Splits:
    """Clip indices (into the ShardSet) of each split in video-key order, and where the validation clips came from."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    val_source: str  # "cache" (the split column), "val-fraction" (held out here) or "none"
    holdout: str = HOLDOUT_GROUPS  # the rule a "val-fraction" hold-out follows (HOLDOUT_RULES)

    def counts(self) -> dict[str, int | str]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test), "val_source": self.val_source}


def select_splits(
    labels: np.ndarray,
    splits: np.ndarray,
    videos: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    views: np.ndarray | None = None,
    pairs: Sequence[tuple[int, int]] = (),
    validate: bool = True,
    holdout: str = HOLDOUT_GROUPS,
) -> Splits:
    """Split labelled clean clips into train / val / test (see the module doc). ``val_fraction`` only applies when
    no clip is marked ``val``; ``views`` (``ShardSet.views``; None: all clean) leaves out augmented views;
    ``pairs`` (class indices of mirrored pairs) links same-named files of paired classes into one group. Without
    ``validate`` (``train-probe --val none``) there is no val split: nothing is held out and a cache's val clips
    are left out. ``holdout``: the rule of the held-out videos (``HOLDOUT_RULES``)."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if holdout not in HOLDOUT_RULES:
        raise DataError(f"unknown val hold-out rule {holdout!r} (known: {', '.join(HOLDOUT_RULES)})")
    labels, splits, videos = np.asarray(labels), np.asarray(splits), np.asarray(videos)
    if views is not None:
        labels = np.where(np.asarray(views) == 0, labels, -1)  # a view is never a clip of its own
    # Clips in video-key order, whatever order extraction wrote them in (parts merged from several ranks, a resumed
    # run), so that a seed gives the same batches, and the same run, on every extraction of the same videos.
    order = np.argsort(videos, kind="stable")
    ranked = np.empty(len(order), dtype=np.int64)
    ranked[order] = np.arange(len(order))

    def canonical(indices: np.ndarray) -> np.ndarray:
        return indices[np.argsort(ranked[indices], kind="stable")]

    result = _select(labels, splits, videos, val_fraction if validate else 0.0, seed, pairs, holdout)
    if not validate:
        result = Splits(result.train, result.val[:0], result.test, "none")
    return Splits(canonical(result.train), canonical(result.val), canonical(result.test), result.val_source, holdout)


def shard_splits(
    shards: ShardSet,
    val_fraction: float = 0.2,
    seed: int = 0,
    pairs: Sequence[tuple[int, int]] = (),
    validate: bool = True,
    holdout: str = HOLDOUT_GROUPS,
) -> Splits:
    """``select_splits`` of a ShardSet's clean clips (its labels, splits, videos and views)."""
    return select_splits(
        shards.labels, shards.splits, shards.videos, val_fraction, seed, shards.views, pairs, validate, holdout
    )


def _select(
    labels: np.ndarray,
    splits: np.ndarray,
    videos: np.ndarray,
    val_fraction: float,
    seed: int,
    pairs: Sequence[tuple[int, int]],
    holdout: str,
) -> Splits:
    labelled = labels >= 0
    test = np.nonzero(labelled & (splits == "test"))[0]
    val_mask = labelled & (splits == "val")
    pool = labelled & ((splits == "train") | (splits == ""))
    if val_mask.any():
        return Splits(np.nonzero(pool)[0], np.nonzero(val_mask)[0], test, "cache")
    pool_indices = np.nonzero(pool)[0]
    if val_fraction == 0 or len(pool_indices) == 0:
        return Splits(pool_indices, np.zeros(0, dtype=np.int64), test, "none")
    held_out = stratified_video_holdout(
        labels[pool_indices], videos[pool_indices], val_fraction, seed, pairs, grouped=holdout != HOLDOUT_FILES,
        hmdb51_sources=holdout == HOLDOUT_GROUPS,
    )  # fmt: skip
    return Splits(pool_indices[~held_out], pool_indices[held_out], test, "val-fraction")


def stratified_video_holdout(
    labels: np.ndarray,
    videos: np.ndarray,
    fraction: float,
    seed: int,
    pairs: Sequence[tuple[int, int]] = (),
    grouped: bool = True,
    hmdb51_sources: bool = True,
) -> np.ndarray:
    """Boolean mask over clips: True for the clips of the held-out groups of videos.

    A group (``groups.video_groups``) is a source video file, or the files of a UCF101 group, an HMDB51 source
    movie or a Drive&Act participant, or same-named files in the classes of a mirrored pair in ``pairs``; a group
    is held out whole. About ``fraction`` of the groups are held out, split across strata (the set of classes a group
    holds; a lone video: its class) in proportion to their group counts (largest remainders get the rounding), never
    taking a stratum's last training group; groups in a stratum of several classes too small for its own draw share
    one pooled stratum (``groups.pool_small_mixed``). A video whose clips carry several labels counts for its most
    frequent one. A set without groups of several videos draws exactly as the per-video hold-out before groups did;
    without ``grouped`` every source file is a group of its own (that per-video hold-out, ``HOLDOUT_FILES``);
    without ``hmdb51_sources`` an HMDB51 name's group is its clips of one action and tags (``HOLDOUT_GROUPS_V1``).
    """
    clips_of: dict[str, list[int]] = defaultdict(list)
    for clip, key in enumerate(videos):
        clips_of[source_video(str(key))].append(clip)
    # Ties go to the smallest class index, not to whichever clip was written first.
    video_label = {
        name: max(Counter(labels[clips].tolist()).items(), key=lambda item: (item[1], -item[0]))[0]
        for name, clips in clips_of.items()
    }
    paired = {c for pair in pairs for c in pair}
    if grouped:
        group_of = video_groups(
            sorted(clips_of), name_linked=lambda name: video_label[name] in paired, hmdb51_sources=hmdb51_sources
        )
    else:
        group_of = {name: name for name in clips_of}
    groups: dict[str, list[int]] = defaultdict(list)
    classes_of: dict[str, set[int]] = defaultdict(set)
    for name in sorted(clips_of):
        groups[group_of[name]].extend(clips_of[name])
        classes_of[group_of[name]].add(video_label[name])
    by_stratum: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for name in sorted(groups):
        by_stratum[tuple(sorted(classes_of[name]))].append(name)
    by_stratum = pool_small_mixed(by_stratum, fraction)  # Drive&Act's subjects: each its own mix of classes
    strata = sorted(by_stratum)
    sizes = np.array([len(by_stratum[c]) for c in strata])
    caps = sizes - 1  # keep at least one group of each stratum for training
    if caps.sum() == 0:
        return np.zeros(len(labels), dtype=bool)
    total = min(int(caps.sum()), max(1, round(fraction * sizes.sum())))
    rng = np.random.default_rng(seed)
    quota = np.minimum(np.floor(fraction * sizes).astype(int), caps)
    # Hand the remaining groups to the strata with the largest fractional share (random order breaks ties).
    tie_break = rng.random(len(strata))
    order = np.lexsort((tie_break, -(fraction * sizes - np.floor(fraction * sizes))))
    while quota.sum() < total:
        for c in order:
            if quota.sum() < total and quota[c] < caps[c]:
                quota[c] += 1
    while quota.sum() > total:  # only when the floors alone exceed the rounded total
        quota[np.argmax(quota)] -= 1
    mask = np.zeros(len(labels), dtype=bool)
    for stratum, count in zip(strata, quota, strict=True):
        for name in rng.permutation(by_stratum[stratum])[:count]:
            mask[groups[name]] = True
    return mask
