"""Group-aware splits: neither ``prepare``'s hold-out nor train-probe's val hold-out ever splits a group of videos
(a UCF101 ``v_X_gNN`` group, a clip and its same-named reversed copy in the classes of a mirrored pair)."""

from pathlib import PurePosixPath

import numpy as np

from step_cache.catalog import VideoItem, read_annotations
from step_cache.datasets import prepare
from step_cache.datasets.groups import group_key
from step_cache.datasets.holdout import holdout
from step_cache.training.splits import select_splits, source_video

CLASSES = ("ApplyEyeMakeup", "Biking", "Diving", "Fencing")


def _ucf_list() -> list[VideoItem]:
    # UCF101-style: 4 classes x 7 groups x 2..4 clips (the clip count varies, as in UCF101).
    return [
        VideoItem(f"{name}/v_{name}_g{g:02d}_c{c:02d}.avi", name)
        for name in CLASSES
        for g in range(1, 8)
        for c in range(1, 2 + (g % 3) + 1)
    ]


def test_no_ucf101_group_is_in_two_of_train_val_test():
    items = _ucf_list()
    for seed in range(4):
        held = holdout(items, test_fraction=0.25, seed=seed).items
        labels = np.array([CLASSES.index(i.label) for i in held])
        splits = np.array([i.split or "" for i in held])
        videos = np.array([i.key for i in held])
        chosen = select_splits(labels, splits, videos, val_fraction=0.3, seed=seed)
        assert chosen.val_source == "val-fraction" and len(chosen.val) > 0 and len(chosen.test) > 0
        sides = [{group_key(v) for v in videos[part]} for part in (chosen.train, chosen.val, chosen.test)]
        assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]
        assert len(chosen.train) + len(chosen.val) + len(chosen.test) == len(items)
        # every class keeps training groups, and 30 % of the 5-6 training groups per class is about 2 held out
        for c in range(len(CLASSES)):
            val_groups = {group_key(v) for v in videos[chosen.val][labels[chosen.val] == c]}
            assert 1 <= len(val_groups) <= 2


def test_val_holdout_keeps_a_clip_and_its_reversed_copy_of_a_mirrored_pair_together():
    # forward/backward are a mirrored pair (a clip and its reversed copy share a file name); "wave" and "clap" are
    # not paired, and their same-named files are a coincidence of numbering, not one clip.
    names = ["forward", "backward", "wave", "clap"]
    videos = [f"{name}/clip_{i}.mp4" for name in names for i in range(10)]
    labels = np.array([names.index(v.split("/")[0]) for v in videos])
    splits = np.array([""] * len(videos))
    for seed in range(6):
        chosen = select_splits(labels, splits, videos, val_fraction=0.3, seed=seed, pairs=[(0, 1)])
        val = {source_video(str(v)) for v in np.asarray(videos)[chosen.val]}
        for i in range(10):
            assert (f"forward/clip_{i}.mp4" in val) == (f"backward/clip_{i}.mp4" in val)
        # the pair's 10 groups give 3 val groups (6 videos); the unpaired classes 3 videos each
        assert sum(v.startswith(("forward/", "backward/")) for v in val) == 6
        assert sum(v.startswith("wave/") for v in val) == 3 and sum(v.startswith("clap/") for v in val) == 3
    # Unpaired same-named files are drawn per video: some seed separates a wave clip from its clap namesake.
    draws = [select_splits(labels, splits, videos, val_fraction=0.3, seed=s, pairs=[(0, 1)]) for s in range(6)]
    separated = [
        any((f"wave/clip_{i}.mp4" in vals) != (f"clap/clip_{i}.mp4" in vals) for i in range(10))
        for vals in ({str(v) for v in np.asarray(videos)[d.val]} for d in draws)
    ]
    assert any(separated)


def test_ungrouped_videos_draw_as_before_groups():
    # Without groups of several videos the draw is the per-video one: a seed's held-out videos are the same with
    # pairs declared or not when no file names repeat.
    videos = [f"{name}/{name}_{i}.mp4" for name in ("open", "close") for i in range(8)]
    labels = np.array([0] * 8 + [1] * 8)
    splits = np.array([""] * 16)
    for seed in range(3):
        plain = select_splits(labels, splits, videos, val_fraction=0.25, seed=seed)
        paired = select_splits(labels, splits, videos, val_fraction=0.25, seed=seed, pairs=[(0, 1)])
        np.testing.assert_array_equal(plain.val, paired.val)
        assert len(plain.val) == 4


def test_prepare_test_fraction_keeps_a_clip_and_its_reversed_copy_together(tmp_path):
    root = tmp_path / "videos"
    for label in ("forward", "backward"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            (root / label / f"clip_{i}.mp4").write_bytes(b"x")
    for seed in range(3):
        out = tmp_path / f"list-{seed}.csv"
        prepare("folder", root, out, test_fraction=0.25, seed=seed, progress=False)
        split = {item.path: item.split for item in read_annotations(out)}
        assert sorted(split.values()).count("test") == 4  # 2 of the 8 groups, both copies of each
        for i in range(8):
            assert split[f"forward/clip_{i}.mp4"] == split[f"backward/clip_{i}.mp4"]
        assert {PurePosixPath(p).parent.name for p, s in split.items() if s == "test"} == {"forward", "backward"}
