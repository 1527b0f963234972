"""Group-aware splits: neither ``prepare``'s hold-out nor train-probe's val hold-out ever splits a group of videos
(a UCF101 ``v_X_gNN`` group, a clip and its same-named reversed copy in the classes of a mirrored pair)."""

import dataclasses
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


def _train_val_test_groups(
    items: list[VideoItem], classes: list[str], seed: int
) -> tuple[list[set[str]], dict[str, set[str]]]:
    """prepare's test hold-out (25 %), then train-probe's val hold-out (30 %): each side's group keys, and each
    class's val group keys."""
    held = holdout(items, test_fraction=0.25, seed=seed).items
    labels = np.array([classes.index(i.label) for i in held])
    splits = np.array([i.split or "" for i in held])
    videos = np.array([i.key for i in held])
    chosen = select_splits(labels, splits, videos, val_fraction=0.3, seed=seed)
    assert chosen.val_source == "val-fraction" and len(chosen.val) > 0 and len(chosen.test) > 0
    assert len(chosen.train) + len(chosen.val) + len(chosen.test) == len(items)
    sides = [
        {group_key(source_video(str(v))) for v in videos[part]} for part in (chosen.train, chosen.val, chosen.test)
    ]
    assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]
    val_by_class = {
        name: {group_key(source_video(str(v))) for v in videos[chosen.val][labels[chosen.val] == c]}
        for c, name in enumerate(classes)
    }
    return sides, val_by_class


def test_no_ucf101_group_is_in_two_of_train_val_test():
    for seed in range(4):
        _, val_by_class = _train_val_test_groups(_ucf_list(), list(CLASSES), seed)
        # every class keeps training groups, and 30 % of the 5-6 training groups per class is about 2 held out
        assert all(1 <= len(val_by_class[name]) <= 2 for name in CLASSES)


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


def test_group_keys_of_hmdb51_and_drive_act_names():
    # HMDB51: the clips of one source movie share a key, in every action it gives clips of (the source is the name
    # before _<action>: actions and sources may hold "_"); the six tags must all be there.
    assert group_key("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi") == "source:April_09"
    assert group_key("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi") == "source:April_09"
    assert group_key("kiss/Pirates_kiss_h_cm_np2_le_bad_12.avi") == "source:Pirates"
    assert group_key("eat/AmericanGangster_eat_h_cm_np1_fr_goo_0.avi") == "source:AmericanGangster"
    assert group_key("drink/AmericanGangster_drink_u_nm_np2_le_med_3.avi") == "source:AmericanGangster"
    assert group_key("situp/Gym_situp_f_nm_np1_fr_goo_0.avi") == "source:Gym"  # the longest action: situp, not sit
    assert group_key("wink/Film_wink_h_nm_np1_fr_goo_0.avi") == "source:Film"  # its class folder names the action
    # the class folder decides between actions that end one another (sword, draw_sword): the source keeps the rest
    assert group_key("sword/Duel_draw_sword_f_cm_np2_ri_goo_1.avi") == "source:Duel_draw"
    assert group_key("draw_sword/Duel_draw_sword_u_nm_np1_fr_med_0.avi") == "source:Duel"
    assert group_key("Duel_draw_sword_u_nm_np1_fr_med_0.avi") == "source:Duel"  # no folder: the longest action
    assert group_key("x/Film_blink_h_nm_np1_fr_goo_2.avi") == "Film_blink_h_nm_np1_fr_goo"  # unknown: as one action
    assert (
        group_key("kiss/Pirates_kiss_h_cm_np2_side_bad_12.avi") == "Pirates_kiss_h_cm_np2_side_bad_12"
    )  # no viewpoint
    assert group_key("kiss/clip_3.avi", name_linked=False) == "path:kiss/clip_3.avi"
    # Drive&Act: the participant folder nearest the file, whatever the view folder above it.
    assert group_key("kinect_color/vp3/run1b_2018-05-29-14-02-47.kinect_color.mp4") == "subject:vp3"
    assert group_key("vp12/run2_2018-05-24-13-59-33.kinect_ir.mp4", name_linked=False) == "subject:vp12"
    assert group_key("vp3.mp4") == "vp3"  # a file named like a participant is not a participant folder


def test_no_hmdb51_source_recording_is_in_two_of_train_val_test():
    # HMDB51-style: 3 classes x 6 source recordings of their own x 1..3 clips numbered _0, _1, ...
    classes = ["brush_hair", "kiss", "sit"]
    items = [
        VideoItem(f"{name}/{name.title()}Movie{s}_{name}_u_nm_np1_fr_med_{c}.avi", name)
        for name in classes
        for s in range(6)
        for c in range(1 + s % 3)
    ]
    assert len({group_key(i.path) for i in items}) == 18
    for seed in range(4):
        (train, val, test), _ = _train_val_test_groups(items, classes, seed)
        assert len(train) + len(val) + len(test) == 18


def test_no_hmdb51_source_movie_is_in_two_of_train_val_test_across_its_actions():
    # One source movie gives clips of two actions (as AmericanGangster_eat_... and AmericanGangster_drink_...):
    # 10 movies, each in two of 3 actions, 2 clips per action with their own tags.
    classes = ["eat", "drink", "smoke"]
    tags = ("h_cm_np1_fr_goo", "u_nm_np2_le_med")
    items = [
        VideoItem(f"{action}/Film_{s}_{action}_{tags[c]}_{c}.avi", action)
        for s in range(10)
        for action in (classes[s % 3], classes[(s + 1) % 3])
        for c in range(2)
    ]
    assert {group_key(i.path) for i in items} == {f"source:Film_{s}" for s in range(10)}
    for seed in range(4):
        (train, val, test), _ = _train_val_test_groups(items, classes, seed)  # disjoint: checked there
        assert train | val | test == {f"source:Film_{s}" for s in range(10)} and val and test


def test_no_drive_act_participant_is_in_two_of_train_val_test():
    # Drive&Act-style: 10 participants x 2 runs, 3-second chunks (frame ranges) of different activities; each
    # participant's chunks cover its own mix of activities, so every participant is a group of several classes.
    classes = ["drinking", "eating", "reading_magazine", "writing", "sitting_still"]
    items = []
    for p in range(1, 11):
        for run in (1, 2):
            path = f"kinect_color/vp{p}/run{run}_2018-05-{p:02d}-10-00-00.kinect_color.mp4"
            for chunk in range(3):
                label = classes[(p + run + chunk) % len(classes)]
                items.append(VideoItem(path, label, None, chunk * 90, chunk * 90 + 90))
    for seed in range(4):
        (train, val, test), _ = _train_val_test_groups(items, classes, seed)
        assert train | val | test == {f"subject:vp{p}" for p in range(1, 11)}
        # 25 % of 10 participants is 2 or 3 held out for test, 30 % of the rest about 2 for val
        assert 2 <= len(test) <= 3 and 2 <= len(val) <= 3


def test_prepare_hmdb51_val_fraction_keeps_a_source_recording_whole(tmp_path):
    # The official lists of HMDB51 have no val: prepare --val-fraction draws it from train by source recording.
    root = tmp_path / "hmdb"
    (root / "splits").mkdir(parents=True)
    for name in ("brush_hair", "kiss"):
        lines = []
        for s in range(8):
            for c in range(3):
                video = f"{name.title()}Src{s}_{name}_u_cm_np1_fr_goo_{c}.avi"  # sources of its own
                lines.append(f"{video} {1 if s < 6 else 2}\n")
                (root / "hmdb51_org" / name).mkdir(parents=True, exist_ok=True)
                (root / "hmdb51_org" / name / video).write_bytes(b"x")
        (root / "splits" / f"{name}_test_split1.txt").write_text("".join(lines))
    for seed in range(3):
        out = tmp_path / f"list-{seed}.csv"
        result = prepare("hmdb51", root, out, val_fraction=0.34, seed=seed, progress=False)
        assert result.groups_kept == 12  # the 6 training recordings of each class, 3 clips each
        split_of: dict[str, set[str]] = {}
        for item in read_annotations(out):
            split_of.setdefault(group_key(item.path), set()).add(item.split)
        assert all(len(splits) == 1 for splits in split_of.values())
        val = [key for key, splits in split_of.items() if splits == {"val"}]
        assert sorted(key.split(":")[1].split("Src")[0] for key in val) == ["Brush_Hair"] * 2 + ["Kiss"] * 2


def _drive_act_csvs(folder, rows_by_subset):
    folder.mkdir(parents=True, exist_ok=True)
    header = "participant_id,file_id,annotation_id,frame_start,frame_end,activity,chunk_id\n"
    for subset, rows in rows_by_subset.items():
        (folder / f"midlevel.chunks_90.split_0.{subset}.csv").write_text(header + "".join(rows))


def test_drive_act_groups_by_participant_id_and_falls_back_to_the_vp_folder(tmp_path):
    from step_cache.datasets import drive_act
    from step_cache.datasets.adapter import Request

    # file_ids without a participant folder: only the participant_id column tells whose recording it is
    train = [f"{p},session{s}_p{p}.kinect_color,0,{c * 90},{c * 90 + 90},{('eating', 'drinking')[c]},{c}\n"
             for p in (4, 5, 6, 7) for s in (1, 2) for c in (0, 1)]  # fmt: skip
    _drive_act_csvs(tmp_path / "a", {
        "train": train,
        "val": ["vp8,session1_p8.kinect_color,0,0,90,eating,0\n"],
        "test": [",vp9/run1.kinect_color,0,0,90,drinking,0\n"],  # an empty cell: the path's vp9 folder
    })  # fmt: skip
    items = drive_act.read(Request("drive-act", tmp_path / "a", tmp_path / "a")).items
    groups = {item.path: item.group for item in items}
    assert groups["session2_p5.kinect_color.mp4"] == "subject:vp5" and groups["session1_p8.kinect_color.mp4"] == (
        "subject:vp8"
    )
    assert groups["vp9/run1.kinect_color.mp4"] is None and group_key("vp9/run1.kinect_color.mp4") == "subject:vp9"
    # prepare's hold-out draws whole participants (the official lists have val and test: drawn here from train)
    training = [dataclasses.replace(item, split=None) for item in items if item.split == "train"]
    for seed in range(4):
        held = holdout(training, val_fraction=0.25, seed=seed)
        split_of: dict[str, set[str]] = {}
        for item in held.items:
            split_of.setdefault(item.group, set()).add(item.split)
        assert all(len(splits) == 1 for splits in split_of.values()), split_of
        assert sum(splits == {"val"} for splits in split_of.values()) == 1  # 1 of 4 participants
        assert held.groups_kept == 4  # each participant's two recordings
    # without the column, the path decides (as before): these recordings would be 8 groups of their own
    assert len({group_key(item.path) for item in training}) == 8


def test_the_groups_v1_hold_out_keeps_hmdb51_clips_grouped_within_an_action():
    """A run recorded with data.holdout "groups-v1" (HMDB51 grouped by the name without _<N>) is reproduced as it
    was; "groups-v2", today's rule, keeps a source movie whole across its actions."""
    from step_cache.training.splits import HOLDOUT_GROUPS, HOLDOUT_GROUPS_V1

    classes = ["eat", "drink", "smoke"]
    videos = np.array([f"{action}/Film_{s}_{action}_h_cm_np1_fr_goo_{c}.avi" for s in range(12)
                       for action in (classes[s % 3], classes[(s + 1) % 3]) for c in range(2)])  # fmt: skip
    labels = np.array([classes.index(v.split("/")[0]) for v in videos])
    splits = np.full(len(videos), "", dtype=object)
    split_v1 = 0
    for seed in range(6):
        for rule in (HOLDOUT_GROUPS, HOLDOUT_GROUPS_V1):
            chosen = select_splits(labels, splits, videos, 0.3, seed, holdout=rule)
            assert chosen.holdout == rule
            sources = [{v.split("/")[1].split("_")[1] for v in videos[part]} for part in (chosen.train, chosen.val)]
            if rule == HOLDOUT_GROUPS:
                assert not sources[0] & sources[1]
            else:
                # v1: one action's clips of a movie stay together ...
                within = [{v.rsplit("_", 1)[0] for v in videos[part]} for part in (chosen.train, chosen.val)]
                assert not within[0] & within[1]
                split_v1 += bool(sources[0] & sources[1])  # ... but a movie may sit on both sides
    assert split_v1 >= 3
