"""Draw a stratified random validation / test split out of the training rows, for datasets that ship without one.

Segments of one video always stay together (no video is both trained on and held out), and so do the videos of a
group (``groups.py``: a clip and its reversed copy in another class folder, a UCF101 group, an HMDB51 source
recording, a Drive&Act participant): the draw is over groups, stratified by the classes each group holds.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from step_cache.catalog import VideoItem
from step_cache.datasets.adapter import DatasetError
from step_cache.datasets.groups import pool_small_mixed, video_groups
from step_cache.interface import option


@dataclass
class Holdout:
    """Rows with their splits, and how many groups of several videos (``groups.py``) were kept in one split."""

    items: list[VideoItem]
    groups_kept: int = 0


def holdout(
    items: Sequence[VideoItem], val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0
) -> Holdout:
    """Move about ``val_fraction`` / ``test_fraction`` of each class's training videos to val / test, a group of
    videos (``groups.video_groups``: same-named files across class folders, UCF101 ``v_X_gNN``, HMDB51 source
    recording, Drive&Act participant ``vp<N>``) always whole.

    Candidates are labelled rows with split ``train`` or no split; after the draw they are all ``train`` or held out.
    Groups are stratified by the classes they hold (a mirrored pair's group by both), so every class keeps about the
    requested fraction in each split; groups in a stratum of several classes too small for its own draw are drawn
    from one pooled stratum (``groups.pool_small_mixed``). Asking for a split the dataset already has is an error.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise DatasetError(f"{option(name, fraction)}: must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    if val_fraction == 0.0 and test_fraction == 0.0:
        return Holdout(list(items))
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        if fraction > 0 and any(item.split == split for item in items):
            raise DatasetError(f"the dataset already has a {split} split; {option(split + '_fraction')} would mix two")

    label_of: dict[str, str] = {}  # a video's stratum label: its first row's
    for item in items:
        if item.label is not None and item.split in (None, "train"):
            label_of.setdefault(item.path, item.label)
    # the group an adapter read from its annotations (Drive&Act's participant_id), else the path's
    keys = {item.path: item.group for item in reversed(items) if item.group and item.path in label_of}
    group_of = video_groups(sorted(label_of), keys=keys)  # a lone video's group is its path: ungrouped draws as before
    members: dict[str, list[str]] = defaultdict(list)
    for path in sorted(label_of):
        members[group_of[path]].append(path)
    groups_by_stratum: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for group, paths in members.items():
        groups_by_stratum[tuple(sorted({label_of[p] for p in paths}))].append(group)
    # Drive&Act's subjects each hold their own mix of classes: pooled, or none could be held out.
    smallest = min(f for f in (val_fraction, test_fraction) if f > 0)
    groups_by_stratum = pool_small_mixed(groups_by_stratum, smallest)
    rng = random.Random(seed)
    new_split: dict[str, str] = {}
    for stratum in sorted(groups_by_stratum):
        groups = sorted(groups_by_stratum[stratum])
        rng.shuffle(groups)
        n_val, n_test = round(len(groups) * val_fraction), round(len(groups) * test_fraction)
        # Always leave each stratum at least one training group.
        n_val = min(n_val, len(groups) - 1)
        n_test = min(n_test, len(groups) - 1 - n_val)
        for index, group in enumerate(groups):
            split = "val" if index < n_val else "test" if index < n_val + n_test else "train"
            new_split.update(dict.fromkeys(members[group], split))
    held = [
        replace(item, split=new_split[item.path]) if item.path in new_split and item.split in (None, "train") else item
        for item in items
    ]
    return Holdout(held, sum(len(paths) > 1 for paths in members.values()))
