"""Draw a stratified random validation / test split out of the training rows, for datasets that ship without one.

Segments of one video always stay together (no video is both trained on and held out); each video is stratified by
the label of its first row, so every class keeps about the requested fraction in each split.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace

from step_cache.catalog import VideoItem
from step_cache.datasets.adapter import DatasetError


def holdout(
    items: Sequence[VideoItem], val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0
) -> list[VideoItem]:
    """Move about ``val_fraction`` / ``test_fraction`` of each class's training videos to val / test.

    Candidates are labelled rows with split ``train`` or no split; after the draw they are all ``train`` or held out.
    Asking for a split the dataset already has is an error.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise DatasetError(f"{name} must be in [0, 1), got {fraction}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    if val_fraction == 0.0 and test_fraction == 0.0:
        return list(items)
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        if fraction > 0 and any(item.split == split for item in items):
            raise DatasetError(f"the dataset already has a {split} split; --{split}-fraction would mix two")

    videos_by_label: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for item in items:
        if item.label is not None and item.split in (None, "train") and item.path not in seen:
            seen.add(item.path)
            videos_by_label[item.label].append(item.path)
    rng = random.Random(seed)
    new_split: dict[str, str] = {}
    for label in sorted(videos_by_label):
        paths = sorted(videos_by_label[label])
        rng.shuffle(paths)
        n_val, n_test = round(len(paths) * val_fraction), round(len(paths) * test_fraction)
        # Always leave each class at least one training video.
        n_val = min(n_val, len(paths) - 1)
        n_test = min(n_test, len(paths) - 1 - n_val)
        for index, path in enumerate(paths):
            new_split[path] = "val" if index < n_val else "test" if index < n_val + n_test else "train"
    return [
        replace(item, split=new_split[item.path]) if item.path in new_split and item.split in (None, "train") else item
        for item in items
    ]
