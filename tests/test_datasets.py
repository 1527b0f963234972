"""Dataset adapters: tiny fake trees in each dataset's real annotation format, through the Python API and the CLI."""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.catalog import VideoItem, read_annotations, read_pairs
from step_cache.datasets import ADAPTERS, DatasetError, prepare
from step_cache.datasets.drive_act import DRIVE_ACT_ACTIVITIES, DRIVE_ACT_EXTRA_ACTIVITIES
from step_cache.datasets.holdout import holdout
from step_cache.datasets.ikea_asm import IKEA_ASM_ACTIONS
from step_cache.datasets.pairs import PAIRS_BY_DATASET, SSV2_PAIRS, SSV2_REJECTED
from step_cache.datasets.split_files import HMDB51_CLASSES
from step_cache.datasets.ssv2_labels import SSV2_LABELS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def rows(items: list[VideoItem]) -> list[tuple]:
    return [(i.path, i.label, i.split, i.start_frame, i.end_frame) for i in items]


def run_cli(*args: object):
    # Another command's module may not be on this branch yet; `prepare` registers first either way.
    with contextlib.suppress(ModuleNotFoundError):
        _register_commands()
    # Typer runs a one-command app as that command; with several it is a group that needs the command name.
    group = len(app.registered_commands) > 1 or app.registered_callback is not None
    return CliRunner().invoke(app, ["prepare"] * group + [str(arg) for arg in args])


# --- Something-Something v2 --------------------------------------------------------------------------------------


def ssv2_tree(root: Path, with_test: bool = True) -> Path:
    labels = [
        "Opening something",
        "Closing something",
        "Pushing something from left to right",
        "Pulling something from right to left",
        "Laying something on the table on its side, not upright",
    ]
    write_json(root / "labels" / "labels.json", {name: str(i) for i, name in enumerate(labels)})
    write_json(
        root / "labels" / "train.json",
        [
            {"id": "1", "label": "opening a box", "template": "Opening [something]", "placeholders": ["a box"]},
            {"id": "2", "label": "closing a box", "template": "Closing [something]", "placeholders": ["a box"]},
            {
                "id": "3",
                "label": "pushing pen from left to right",
                "template": "Pushing [something] from left to right",
                "placeholders": ["pen"],
            },
            {
                "id": "4",
                "label": "laying cup on the table on its side, not upright",
                "template": "Laying [something] on the table on its side, not upright",
                "placeholders": ["cup"],
            },
        ],
    )
    write_json(
        root / "labels" / "validation.json",
        [
            {
                "id": "5",
                "label": "pulling pen from right to left",
                "template": "Pulling [something] from right to left",
                "placeholders": ["pen"],
            },
            {"id": "6", "label": "opening a jar", "template": "Opening [something]", "placeholders": ["a jar"]},
        ],
    )
    if with_test:
        write_json(root / "labels" / "test.json", [{"id": "7"}])
        write_text(root / "labels" / "test-answers.csv", "7;Closing something\n")
    for video_id in ["1", "2", "3", "4", "5", "7"]:  # 6 is listed but absent
        touch(root / "20bn-something-something-v2" / f"{video_id}.webm")
    return root


def test_ssv2_rows_labels_splits_missing_and_pairs(tmp_path):
    root = ssv2_tree(tmp_path / "ssv2")
    out = tmp_path / "out" / "annotations.csv"
    result = prepare("ssv2", root, out, progress=False)
    d = "20bn-something-something-v2"
    assert rows(read_annotations(out, root)) == [
        (f"{d}/1.webm", "Opening something", "train", None, None),
        (f"{d}/2.webm", "Closing something", "train", None, None),
        (f"{d}/3.webm", "Pushing something from left to right", "train", None, None),
        (f"{d}/4.webm", "Laying something on the table on its side, not upright", "train", None, None),
        (f"{d}/5.webm", "Pulling something from right to left", "val", None, None),
        (f"{d}/7.webm", "Closing something", "test", None, None),
    ]
    assert result.missing == [f"{d}/6.webm"]
    assert result.videos_root == root
    assert result.pairs_path == out.parent / "pairs.txt"
    # Only the reviewed pairs whose two classes occur; a push pairs with the opposite pull.
    assert read_pairs(result.pairs_path) == [
        ("Opening something", "Closing something"),
        ("Pushing something from left to right", "Pulling something from right to left"),
    ]
    assert "1 listed video(s) missing" in result.summary()


def test_ssv2_test_list_needs_answers_and_old_file_names(tmp_path):
    root = ssv2_tree(tmp_path / "ssv2", with_test=False)
    write_json(root / "labels" / "test.json", [{"id": "7"}])
    for name in ["labels", "train", "validation", "test"]:  # the 2017 release's file names
        (root / "labels" / f"{name}.json").rename(root / "labels" / f"something-something-v2-{name}.json")
    result = prepare("ssv2", root, tmp_path / "a.csv", progress=False)
    assert {i.split for i in result.items} == {"train", "val"}
    assert any("test-answers.csv" in note for note in result.notes)


def test_ssv2_errors_name_the_file(tmp_path):
    root = ssv2_tree(tmp_path / "ssv2")
    with pytest.raises(DatasetError, match="does not exist"):
        prepare("ssv2", tmp_path / "nowhere", tmp_path / "a.csv")
    train = root / "labels" / "train.json"
    good = train.read_text()
    write_json(train, [{"id": "9", "template": "Juggling [something]", "placeholders": ["balls"]}])
    with pytest.raises(
        DatasetError,
        match=r"train\.json: entry 0 \(id 9\): template 'Juggling \[something\]' is "
        r"not in labels\.json",
    ):
        prepare("ssv2", root, tmp_path / "a.csv")
    write_json(train, [{"id": "9"}])
    with pytest.raises(DatasetError, match=r"train\.json: entry 0: missing key 'template'"):
        prepare("ssv2", root, tmp_path / "a.csv")
    train.write_text(good[:40])
    with pytest.raises(DatasetError, match=r"train\.json: malformed JSON at line 1 column \d+"):
        prepare("ssv2", root, tmp_path / "a.csv")
    train.write_text(good)
    write_text(root / "labels" / "test-answers.csv", "7;Juggling something\n")
    with pytest.raises(DatasetError, match=r"test-answers\.csv:1: label 'Juggling something' is not in labels\.json"):
        prepare("ssv2", root, tmp_path / "a.csv")
    (root / "labels" / "validation.json").unlink()
    with pytest.raises(DatasetError, match=r"SSv2 val list not found: looked for validation\.json"):
        prepare("ssv2", root, tmp_path / "a.csv")
    with pytest.raises(DatasetError, match="split= does not apply"):
        prepare("ssv2", root, tmp_path / "a.csv", split=2)


def test_ssv2_pairs_file_equals_the_documented_list(tmp_path):
    root = tmp_path / "ssv2"
    write_json(root / "labels.json", {name: str(i) for i, name in enumerate(SSV2_LABELS)})
    entries = [{"id": str(i), "template": name, "placeholders": []} for i, name in enumerate(SSV2_LABELS)]
    write_json(root / "train.json", entries)
    write_json(root / "validation.json", entries[:1])
    for i in range(len(SSV2_LABELS)):
        touch(root / f"{i}.webm")
    result = prepare("ssv2", root, tmp_path / "ssv2.csv", progress=False)
    assert len(result.items) == 174 and not result.missing
    assert read_pairs(result.pairs_path, SSV2_LABELS) == [pair.names for pair in SSV2_PAIRS] == docs_pairs("ssv2")


# --- the reviewed pair lists ---------------------------------------------------------------------------------------


def docs_pairs(dataset: str, kind: str = "pairs") -> list[tuple[str, str]]:
    """The ``first | second`` columns of the table after ``<!-- pairs: dataset -->`` in docs/datasets.md."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(f"<!-- {kind}: {dataset} -->")
    table = []
    for line in text[start:].splitlines()[3:]:  # marker, header, separator
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table.append((cells[0], cells[1]))
    return table


@pytest.mark.parametrize("dataset", sorted(PAIRS_BY_DATASET))
def test_docs_tables_equal_the_pair_lists(dataset):
    assert docs_pairs(dataset) == [pair.names for pair in PAIRS_BY_DATASET[dataset]]


def test_pair_names_are_real_classes_and_each_class_pairs_once():
    labels = {
        "ssv2": set(SSV2_LABELS),
        "hmdb51": set(HMDB51_CLASSES),
        "drive-act": set(DRIVE_ACT_ACTIVITIES) | set(DRIVE_ACT_EXTRA_ACTIVITIES),
        "ikea-asm": set(IKEA_ASM_ACTIONS),
    }
    for dataset, pairs in PAIRS_BY_DATASET.items():
        names = [name for pair in pairs for name in pair.names]
        assert len(names) == len(set(names)), dataset
        assert set(names) <= labels.get(dataset, set()), dataset
    assert docs_pairs("ssv2", "rejected") == [(a, b) for a, b, _ in SSV2_REJECTED]
    assert {name for a, b, _ in SSV2_REJECTED for name in (a, b)} <= set(SSV2_LABELS)
    assert len(IKEA_ASM_ACTIONS) == 33 and len(DRIVE_ACT_ACTIVITIES) == 34 and len(HMDB51_CLASSES) == 51


# --- Diving48 ------------------------------------------------------------------------------------------------------


def diving48_tree(root: Path) -> Path:
    write_json(
        root / "Diving48_vocab.json", [["Back", "15som", "05Twis", "FREE"], ["Forward", "Dive", "NoTwis", "PIKE"]]
    )
    write_json(
        root / "Diving48_V2_train.json",
        [
            {"vid_name": "-mmq0PT-u8k_00155", "label": 0, "start_frame": 0, "end_frame": 48},
            {"vid_name": "-mmq0PT-u8k_00156", "label": 1, "start_frame": 3, "end_frame": 70},
        ],
    )
    write_json(
        root / "Diving48_V2_test.json",
        [{"vid_name": "2x00lRzlTVQ_00000", "label": 1, "start_frame": 0, "end_frame": 30}],
    )
    for name in ["-mmq0PT-u8k_00155", "-mmq0PT-u8k_00156", "2x00lRzlTVQ_00000"]:
        touch(root / "rgb" / f"{name}.mp4")
    return root


def test_diving48_vocab_names_whole_clips_and_frame_ranges(tmp_path):
    root = diving48_tree(tmp_path / "d48")
    result = prepare("diving48", root, tmp_path / "d48.csv", progress=False)
    assert rows(result.items) == [
        ("rgb/-mmq0PT-u8k_00155.mp4", "Back+15som+05Twis+FREE", "train", None, None),
        ("rgb/-mmq0PT-u8k_00156.mp4", "Forward+Dive+NoTwis+PIKE", "train", None, None),
        ("rgb/2x00lRzlTVQ_00000.mp4", "Forward+Dive+NoTwis+PIKE", "test", None, None),
    ]
    assert result.pairs_path is None and not (tmp_path / "pairs.txt").exists()
    ranged = prepare("diving48", root, tmp_path / "r.csv", use_frame_ranges=True, progress=False)
    assert [(i.start_frame, i.end_frame) for i in read_annotations(tmp_path / "r.csv")] == [(0, 48), (3, 70), (0, 30)]
    assert len(ranged.items) == 3


def test_diving48_errors(tmp_path):
    root = diving48_tree(tmp_path / "d48")
    write_json(root / "Diving48_V2_test.json", [{"vid_name": "x", "label": 48, "start_frame": 0, "end_frame": 9}])
    with pytest.raises(
        DatasetError,
        match=r"Diving48_V2_test\.json: entry 0 \(x\): label 48 is not in "
        r"Diving48_vocab\.json",
    ):
        prepare("diving48", root, tmp_path / "a.csv")
    write_json(root / "Diving48_V2_test.json", [{"vid_name": "x", "label": "1"}])
    with pytest.raises(DatasetError, match=r"entry 0: 'label' has the wrong type"):
        prepare("diving48", root, tmp_path / "a.csv")
    (root / "Diving48_V2_test.json").unlink()
    with pytest.raises(DatasetError, match=r"Diving48 test list not found: looked for Diving48_V2_test\.json"):
        prepare("diving48", root, tmp_path / "a.csv")


# --- UCF101 and HMDB51 ---------------------------------------------------------------------------------------------


def ucf101_tree(root: Path) -> Path:
    lists = root / "ucfTrainTestlist"
    write_text(lists / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n")
    for n in (1, 2):
        first, second = ("g08", "g01") if n == 1 else ("g01", "g08")
        write_text(
            lists / f"trainlist0{n}.txt",
            f"ApplyEyeMakeup/v_ApplyEyeMakeup_{first}_c01.avi 1\r\n"
            f"HandstandPushups/v_HandStandPushups_{first}_c02.avi 2\r\n",
        )
        write_text(lists / f"testlist0{n}.txt", f"ApplyEyeMakeup/v_ApplyEyeMakeup_{second}_c01.avi\n")
    for rel in [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c02.avi",
        "HandstandPushups/v_HandStandPushups_g01_c02.avi",
    ]:
        touch(root / "UCF-101" / rel)
    return root


def test_ucf101_official_splits(tmp_path):
    root = ucf101_tree(tmp_path / "ucf")
    split2 = prepare("ucf101", root, tmp_path / "u.csv", split=2, progress=False)
    assert rows(split2.items) == [
        ("UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup", "train", None, None),
        ("UCF-101/HandstandPushups/v_HandStandPushups_g01_c02.avi", "HandstandPushups", "train", None, None),
        ("UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", "test", None, None),
    ]
    assert split2.pairs_path is None
    with pytest.raises(DatasetError, match="split= must be one of 1, 2, 3"):
        prepare("ucf101", root, tmp_path / "u.csv", split=4)
    with pytest.raises(DatasetError, match=r"UCF101 split 3 train list not found: looked for trainlist03\.txt"):
        prepare("ucf101", root, tmp_path / "u.csv", split=3)


def test_ucf101_label_errors(tmp_path):
    root = ucf101_tree(tmp_path / "ucf")
    write_text(root / "ucfTrainTestlist" / "testlist01.txt", "YoYo/v_YoYo_g01_c01.avi\n")
    with pytest.raises(DatasetError, match=r"testlist01\.txt:1: class 'YoYo' is not in classInd\.txt"):
        prepare("ucf101", root, tmp_path / "u.csv")
    write_text(root / "ucfTrainTestlist" / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2\n")
    with pytest.raises(
        DatasetError,
        match=r"trainlist01\.txt:1: class index 2 is 'HandstandPushups' in "
        r"classInd\.txt but the video is in folder 'ApplyEyeMakeup'",
    ):
        prepare("ucf101", root, tmp_path / "u.csv")


def hmdb51_tree(root: Path) -> Path:
    splits = root / "testTrainMulti_7030_splits"
    write_text(
        splits / "brush_hair_test_split1.txt",
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
        "April_09_brush_hair_u_nm_np1_ba_goo_1.avi 2 \n"
        "April_09_brush_hair_u_nm_np1_ba_goo_2.avi 0 \n",
    )
    write_text(splits / "sit_test_split1.txt", "sit_a_0.avi 1\n")
    write_text(splits / "stand_test_split1.txt", "stand_a_0.avi 2\n")
    write_text(splits / "sit_test_split2.txt", "sit_a_0.avi 2\n")
    for rel in [
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi",
        "sit/sit_a_0.avi",
        "stand/stand_a_0.avi",
    ]:
        touch(root / "hmdb51_org" / rel)
    return root


def test_hmdb51_tags_classes_and_pairs(tmp_path):
    root = hmdb51_tree(tmp_path / "hmdb")
    result = prepare("hmdb51", root, tmp_path / "h" / "h.csv", progress=False)
    assert rows(result.items) == [
        ("hmdb51_org/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "brush_hair", "train", None, None),
        ("hmdb51_org/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", "brush_hair", "test", None, None),
        ("hmdb51_org/sit/sit_a_0.avi", "sit", "train", None, None),
        ("hmdb51_org/stand/stand_a_0.avi", "stand", "test", None, None),
    ]
    assert read_pairs(result.pairs_path) == [("sit", "stand")]
    assert any("3 split files" in note for note in result.notes)
    split2 = prepare("hmdb51", root, tmp_path / "h2.csv", split=2, progress=False)
    assert rows(split2.items) == [("hmdb51_org/sit/sit_a_0.avi", "sit", "test", None, None)]
    assert split2.pairs_path is None  # 'stand' is absent from split 2 here
    write_text(root / "testTrainMulti_7030_splits" / "sit_test_split1.txt", "sit_a_0.avi 3\n")
    with pytest.raises(DatasetError, match=r"sit_test_split1\.txt:1: expected '<video>\.avi <0\|1\|2>'"):
        prepare("hmdb51", root, tmp_path / "h.csv")
    with pytest.raises(DatasetError, match=r"HMDB51 split files not found: looked for <class>_test_split3\.txt"):
        prepare("hmdb51", root, tmp_path / "h.csv", split=3)


# --- Kinetics ------------------------------------------------------------------------------------------------------


def kinetics_tree(root: Path) -> Path:
    write_text(
        root / "annotations" / "train.csv",
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "playing guitar,abc123DEF45,10,20,train,0\n"
        '"passing American football (in game)",xyz,0,10,train,0\n'
        "playing guitar,gone0000000,5,15,train,0\n",
    )
    write_text(
        root / "annotations" / "validate.csv",
        "label,youtube_id,time_start,time_end,split\nplaying guitar,val0000000,30,40,validate\n",
    )
    write_text(root / "annotations" / "test.csv", "youtube_id,time_start,time_end,split\ntst0000000,1,11,test\n")
    write_text(root / "annotations" / "notes.csv", "something,else\n1,2\n")  # not a Kinetics list: ignored
    touch(root / "train" / "playing_guitar" / "abc123DEF45_000010_000020.mp4")  # class folder, '_' for spaces
    touch(root / "train" / "passing American football (in game)" / "xyz_000000_000010.mp4")
    touch(root / "val0000000_000030_000040.mkv")  # flat, another extension
    touch(root / "test" / "tst0000000_000001_000011.mp4")
    return root


def test_kinetics_csv_class_folders_and_flat(tmp_path):
    root = kinetics_tree(tmp_path / "k400")
    result = prepare("kinetics", root, tmp_path / "k.csv", progress=False)
    assert sorted(rows(result.items)) == sorted(
        [
            ("train/playing_guitar/abc123DEF45_000010_000020.mp4", "playing guitar", "train", None, None),
            (
                "train/passing American football (in game)/xyz_000000_000010.mp4",
                "passing American football (in game)",
                "train",
                None,
                None,
            ),
            ("val0000000_000030_000040.mkv", "playing guitar", "val", None, None),
            ("test/tst0000000_000001_000011.mp4", None, "test", None, None),
        ]
    )
    assert result.missing == ["gone0000000_000005_000015.mp4"]
    assert sorted(p.name for p in result.sources) == ["test.csv", "train.csv", "validate.csv"]
    assert read_annotations(tmp_path / "k.csv", root)  # reads back with every file present


def test_kinetics_strict_and_bad_rows(tmp_path):
    root = kinetics_tree(tmp_path / "k400")
    with pytest.raises(DatasetError, match=r"1 listed video\(s\) do not exist, e\.g\. gone0000000_000005_000015\.mp4"):
        prepare("kinetics", root, tmp_path / "k.csv", strict=True)
    write_text(
        root / "annotations" / "validate.csv",
        "label,youtube_id,time_start,time_end,split\nplaying guitar,v,30,40,holdout\n",
    )
    with pytest.raises(DatasetError, match=r"validate\.csv:2: split must be one of .*, got 'holdout'"):
        prepare("kinetics", root, tmp_path / "k.csv")
    write_text(
        root / "annotations" / "validate.csv",
        "label,youtube_id,time_start,time_end,split\nplaying guitar,v,thirty,40,val\n",
    )
    with pytest.raises(DatasetError, match=r"validate\.csv: line 2: time_start must be a number, got 'thirty'"):
        prepare("kinetics", root, tmp_path / "k.csv")
    with pytest.raises(DatasetError, match=r"Kinetics CSV lists not found"):
        prepare("kinetics", root, tmp_path / "k.csv", annotations=root / "train")


# --- folder trees and held-out splits ------------------------------------------------------------------------------


def test_folder_tree_with_stratified_holdout(tmp_path):
    root = tmp_path / "videos"
    for label in ("open", "close"):
        for i in range(10):
            touch(root / label / f"{label}_{i}.mp4")
    plain = prepare("folder", root, tmp_path / "plain.csv", progress=False)
    assert {i.split for i in plain.items} == {None} and len(plain.items) == 20
    result = prepare("folder", root, tmp_path / "f.csv", val_fraction=0.2, test_fraction=0.1, seed=3, progress=False)
    counts = {(label, split): 0 for label in ("open", "close") for split in ("train", "val", "test")}
    for item in read_annotations(tmp_path / "f.csv", root):
        counts[item.label, item.split] += 1
    assert counts == {
        ("open", "train"): 7,
        ("open", "val"): 2,
        ("open", "test"): 1,
        ("close", "train"): 7,
        ("close", "val"): 2,
        ("close", "test"): 1,
    }
    again = prepare("folder", root, tmp_path / "g.csv", val_fraction=0.2, test_fraction=0.1, seed=3, progress=False)
    assert rows(again.items) == rows(result.items)  # the seed fixes the draw
    other = prepare("folder", root, tmp_path / "h.csv", val_fraction=0.2, test_fraction=0.1, seed=4, progress=False)
    assert rows(other.items) != rows(result.items)


def test_folder_tree_with_split_folders(tmp_path):
    root = tmp_path / "videos"
    touch(root / "train" / "open" / "a.mp4")
    touch(root / "validation" / "open" / "b.mp4")
    touch(root / "test" / "close" / "c.mp4")
    result = prepare("folder", root, tmp_path / "f.csv", progress=False)
    assert rows(result.items) == [
        ("test/close/c.mp4", "close", "test", None, None),
        ("train/open/a.mp4", "open", "train", None, None),
        ("validation/open/b.mp4", "open", "val", None, None),
    ]
    with pytest.raises(DatasetError, match="already has a val split"):
        prepare("folder", root, tmp_path / "f.csv", val_fraction=0.5)
    touch(root / "extra" / "x.mp4")
    with pytest.raises(DatasetError, match="mixes split folders"):
        prepare("folder", root, tmp_path / "f.csv")
    with pytest.raises(DatasetError, match="annotations= does not apply"):
        prepare("folder", root, tmp_path / "f.csv", annotations=root)


def test_holdout_keeps_segments_of_a_video_together():
    items = [
        VideoItem(f"v{v}.mp4", label, "train", 10 * s, 10 * s + 10)
        for v in range(6)
        for s, label in enumerate(["open", "close", "open"])
    ]
    split = {}
    for item in holdout(items, val_fraction=0.5, seed=1).items:
        split.setdefault(item.path, set()).add(item.split)
    assert all(len(splits) == 1 for splits in split.values())
    assert sorted(s.pop() for s in split.values()) == ["train"] * 3 + ["val"] * 3
    with pytest.raises(DatasetError, match="must be < 1"):
        holdout(items, val_fraction=0.6, test_fraction=0.5)


# --- Drive&Act -----------------------------------------------------------------------------------------------------

DRIVE_ACT_HEADER = "participant_id,file_id,annotation_id,frame_start,frame_end,activity,chunk_id\n"


def drive_act_tree(root: Path) -> Path:
    for view in ("kinect_color", "inner_mirror"):
        folder = root / "activities_3s" / view
        run = f"vp1/run1b_2018-05-29-14-02-47.{view}"
        write_text(
            folder / "midlevel.chunks_90.split_0.train.csv",
            DRIVE_ACT_HEADER + f"1,{run},0,0,90,opening_door_outside,0\n"
            f"1,{run},0,90,150,opening_door_outside,1\n"
            f"1,{run},1,200,290,closing_door_outside,0\n",
        )
        write_text(
            folder / "midlevel.chunks_90.split_0.val.csv",
            DRIVE_ACT_HEADER + f"2,vp2/run1_2018-05-30.{view},5,30,120,looking_or_moving_around (e.g. searching),0\n",
        )
        write_text(
            folder / "midlevel.chunks_90.split_0.test.csv",
            DRIVE_ACT_HEADER + f"3,vp3/run2_2018-06-01.{view},2,0,60,sitting_still,0\n",
        )
        touch(root / view / f"{run}.mp4")
        touch(root / view / f"vp2/run1_2018-05-30.{view}.mp4")
    return root


def test_drive_act_chunks_become_segments(tmp_path):
    root = drive_act_tree(tmp_path / "da")
    with pytest.raises(
        DatasetError,
        match=r"found for several views \(inner_mirror, kinect_color\); choose one "
        r"with view=",
    ):
        prepare("drive-act", root, tmp_path / "a.csv")
    result = prepare("drive-act", root, tmp_path / "a.csv", view="kinect_color", progress=False)
    run = "kinect_color/vp1/run1b_2018-05-29-14-02-47.kinect_color.mp4"
    assert rows(read_annotations(tmp_path / "a.csv", root)) == [
        (run, "opening_door_outside", "train", 0, 90),
        (run, "opening_door_outside", "train", 90, 150),
        (run, "closing_door_outside", "train", 200, 290),
        (
            "kinect_color/vp2/run1_2018-05-30.kinect_color.mp4",
            "looking_or_moving_around (e.g. searching)",
            "val",
            30,
            120,
        ),
    ]
    assert result.missing == ["kinect_color/vp3/run2_2018-06-01.kinect_color.mp4"]
    assert read_pairs(result.pairs_path) == [("opening_door_outside", "closing_door_outside")]
    with pytest.raises(DatasetError, match=r"no midlevel\.chunks_90\.split_1\.train\.csv under"):
        prepare("drive-act", root, tmp_path / "a.csv", view="kinect_color", split=1)


def test_drive_act_errors(tmp_path):
    root = drive_act_tree(tmp_path / "da")
    folder = root / "activities_3s" / "kinect_color"
    write_text(folder / "midlevel.chunks_90.split_0.val.csv", DRIVE_ACT_HEADER + "2,vp2/x,5,120,150,juggling,0\n")
    result = prepare("drive-act", root, tmp_path / "a.csv", view="kinect_color", progress=False)
    assert any("1 activity name(s) outside the known mid-level list, e.g. 'juggling'" in n for n in result.notes)
    write_text(folder / "midlevel.chunks_90.split_0.val.csv", DRIVE_ACT_HEADER + "2,vp2/x,5,120,120,drinking,0\n")
    with pytest.raises(DatasetError, match=r"split_0\.val\.csv:2: frame_end \(120\) must be greater than frame_start"):
        prepare("drive-act", root, tmp_path / "a.csv", view="kinect_color")
    write_text(folder / "midlevel.chunks_90.split_0.val.csv", "participant_id,file_id,frame_start\n1,x,0\n")
    with pytest.raises(DatasetError, match=r"split_0\.val\.csv: missing column\(s\) frame_end, activity"):
        prepare("drive-act", root, tmp_path / "a.csv", view="kinect_color")
    write_text(folder / "midlevel.chunks_90.split_0.val.csv", DRIVE_ACT_HEADER)
    (folder / "midlevel.chunks_90.split_0.test.csv").unlink()
    with pytest.raises(DatasetError, match=r"split_0\.test\.csv: Drive&Act split file does not exist \(split 0"):
        prepare("drive-act", root, tmp_path / "a.csv", view="kinect_color")
    with pytest.raises(DatasetError, match=r"not found for view 'ceiling'"):
        prepare("drive-act", root, tmp_path / "a.csv", view="ceiling")


# --- IKEA-ASM ------------------------------------------------------------------------------------------------------


def ikea_tree(root: Path) -> Path:
    write_text(root / "indexing_files" / "atomic_action_list.txt", "pick up leg\nlay down leg\nspin leg\n")
    write_json(
        root / "action_annotations" / "gt_segments.json",
        {
            "version": "2.0.1",
            "database": {
                "Lack_Side_Table/0001_white_floor_08_04_2019_08_28_10_47": {
                    "subset": "training",
                    "annotation": [
                        {"segment": [0, 35], "label": "NA"},
                        {"segment": [35, 80], "label": "pick up leg"},
                        {"segment": [80, 80], "label": "spin leg"},
                        {"segment": [80, 140], "label": "lay down leg"},
                    ],
                },
                "Lack_Side_Table/0002_black_floor_09_04_2019_09_00_00_00": {
                    "subset": "testing",
                    "annotation": [
                        {"segment": [10, 50], "label": "spin leg"},
                    ],
                },
            },
        },
    )
    for scan in ("0001_white_floor_08_04_2019_08_28_10_47", "0002_black_floor_09_04_2019_09_00_00_00"):
        for view in ("dev1", "dev3"):
            touch(root / "ANU_ikea_dataset_video" / "Lack_Side_Table" / scan / view / "images" / "scan_video.avi")
    return root


def test_ikea_asm_segments_views_and_pairs(tmp_path):
    root = ikea_tree(tmp_path / "ikea")
    result = prepare("ikea-asm", root, tmp_path / "i.csv", progress=False)
    first = "ANU_ikea_dataset_video/Lack_Side_Table/0001_white_floor_08_04_2019_08_28_10_47/dev3/images/scan_video.avi"
    second = "ANU_ikea_dataset_video/Lack_Side_Table/0002_black_floor_09_04_2019_09_00_00_00/dev3/images/scan_video.avi"
    assert rows(read_annotations(tmp_path / "i.csv", root)) == [
        (first, "NA", "train", 0, 35),
        (first, "pick up leg", "train", 35, 80),
        (first, "lay down leg", "train", 80, 140),
        (second, "spin leg", "test", 10, 50),
    ]
    assert any("1 zero-length segment" in note for note in result.notes)
    assert read_pairs(result.pairs_path) == [("pick up leg", "lay down leg")]
    side = prepare("ikea-asm", root, tmp_path / "j.csv", view="dev1", progress=False)
    assert all("/dev1/images/" in item.path for item in side.items)
    with pytest.raises(DatasetError, match="view= must be one of dev1, dev2, dev3"):
        prepare("ikea-asm", root, tmp_path / "j.csv", view="dev4")


def test_ikea_asm_errors(tmp_path):
    root = ikea_tree(tmp_path / "ikea")
    path = root / "action_annotations" / "gt_segments.json"
    data = json.loads(path.read_text())
    data["database"]["Lack_Side_Table/0002_black_floor_09_04_2019_09_00_00_00"]["annotation"][0]["label"] = "dance"
    write_json(path, data)
    with pytest.raises(DatasetError, match=r"gt_segments\.json: video '.*0002.*', segment 0: label 'dance' is not in "):
        prepare("ikea-asm", root, tmp_path / "i.csv")
    write_json(path, {"database": {"a/b": {"subset": "holdout", "annotation": []}}})
    with pytest.raises(DatasetError, match=r"video 'a/b': subset must be training, validation or testing"):
        prepare("ikea-asm", root, tmp_path / "i.csv")
    write_json(path, [])
    with pytest.raises(DatasetError, match=r"gt_segments\.json: expected an object with a 'database' object"):
        prepare("ikea-asm", root, tmp_path / "i.csv")


# --- shared behaviour and the command line -------------------------------------------------------------------------


def test_unknown_dataset_and_no_videos(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'ssv3'; choose one of ssv2, diving48"):
        prepare("ssv3", tmp_path, tmp_path / "a.csv")
    root = ssv2_tree(tmp_path / "ssv2")
    with pytest.raises(DatasetError, match=r"none of the 7 listed videos exist.*wrong root= or videos="):
        prepare("ssv2", root, tmp_path / "a.csv", videos=tmp_path)
    assert set(ADAPTERS) == {"ssv2", "diving48", "ucf101", "hmdb51", "kinetics", "folder", "drive-act", "ikea-asm"}


def folder_tree(root: Path) -> Path:
    for label in ("open", "close"):
        for i in range(4):
            touch(root / label / f"{label}_{i}.mp4")
    return root


# dataset -> (tree builder, CLI options, the same options for the Python API)
FORMATS = {
    "ssv2": (ssv2_tree, [], {}),
    "diving48": (diving48_tree, ["--use-frame-ranges"], {"use_frame_ranges": True}),
    "ucf101": (ucf101_tree, ["--split", "2"], {"split": 2}),
    "hmdb51": (hmdb51_tree, ["--val-fraction", "0.5"], {"val_fraction": 0.5}),
    "kinetics": (kinetics_tree, [], {}),
    "folder": (folder_tree, ["--val-fraction", "0.5", "--seed", "1"], {"val_fraction": 0.5, "seed": 1}),
    "drive-act": (drive_act_tree, ["--view", "kinect_color"], {"view": "kinect_color"}),
    "ikea-asm": (ikea_tree, ["--view", "dev1"], {"view": "dev1"}),
}


@pytest.mark.parametrize("dataset", sorted(FORMATS))
def test_cli_writes_what_the_python_api_writes(tmp_path, dataset):
    build, cli_options, api_options = FORMATS[dataset]
    root = build(tmp_path / dataset)
    result = run_cli(dataset, "--root", root, "--out", tmp_path / "cli" / "a.csv", *cli_options)
    assert result.exit_code == 0, result.output
    api = prepare(dataset, root, tmp_path / "api" / "a.csv", progress=False, **api_options)
    assert (tmp_path / "cli" / "a.csv").read_text() == (tmp_path / "api" / "a.csv").read_text()
    assert f"wrote {len(api.items)} rows" in result.output
    if api.pairs_path is None:
        assert not (tmp_path / "cli" / "pairs.txt").exists()
    else:
        assert (tmp_path / "cli" / "pairs.txt").read_text() == api.pairs_path.read_text()


def test_cli_prepare_writes_csv_and_summary(tmp_path):
    root = ssv2_tree(tmp_path / "ssv2")
    out = tmp_path / "cli" / "ssv2.csv"
    result = run_cli("ssv2", "--root", root, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote 6 rows (test 1, train 4, val 1) with 5 classes to {out}" in result.output
    assert "1 listed video(s) missing and skipped, e.g. 20bn-something-something-v2/6.webm" in result.output
    assert "2 mirrored pair(s) written to" in result.output
    assert len(read_annotations(out, root)) == 6 and (out.parent / "pairs.txt").is_file()
    hmdb = hmdb51_tree(tmp_path / "hmdb")
    result = run_cli("hmdb51", "--root", hmdb, "--out", tmp_path / "h.csv", "--split", "2")
    assert result.exit_code == 0, result.output
    assert [row["split"] for row in csv.DictReader((tmp_path / "h.csv").open())] == ["test"]
    result = run_cli(
        "folder", "--root", folder_tree(tmp_path / "tree"), "--out", tmp_path / "f.csv", "--test-fraction", "0.5"
    )
    assert result.exit_code == 0, result.output
    assert sorted(row["split"] for row in csv.DictReader((tmp_path / "f.csv").open())) == ["test"] * 4 + ["train"] * 4


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    root = ssv2_tree(tmp_path / "ssv2")
    result = run_cli("ssv2", "--root", root, "--out", tmp_path / "a.csv", "--strict")
    assert result.exit_code == 1
    assert re.fullmatch(r"error: .*1 listed video\(s\) do not exist.*\n", result.stderr)
    result = run_cli("ucf101", "--root", tmp_path / "missing", "--out", tmp_path / "a.csv")
    assert result.exit_code == 1 and result.stderr == f"error: {tmp_path / 'missing'}: dataset root does not exist\n"
    assert not (tmp_path / "a.csv").exists()


# --- end to end: prepare -> extract -> train-probe -----------------------------------------------------------------


def _command_names() -> set[str]:
    with contextlib.suppress(ModuleNotFoundError):
        _register_commands()
    names = {command.name or command.callback.__name__.replace("_", "-") for command in app.registered_commands}
    try:  # the command module alone is not enough: the library behind it must import too
        importlib.import_module("step_cache.extraction.engine")
    except ImportError:
        names -= {"extract", "inspect"}
    return names


COMMANDS = _command_names()
needs_extract = pytest.mark.skipif(
    not {"extract", "inspect"} <= COMMANDS, reason="the extract/inspect commands are not on this branch yet"
)
needs_train_probe = pytest.mark.skipif("train-probe" not in COMMANDS, reason="train-probe is not on this branch yet")
# A random-initialised ViT-Ti on 32 px frames: real code paths in seconds (as in the extraction tests).
TINY_EXTRACT = ["--backbone", "vit-tiny", "--weights", "random", "--frames", "4", "--image-size", "32"]
TINY_EXTRACT += ["--workers", "0", "--quiet"]


def run_app(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args])


def real_ssv2_tree(root: Path) -> Path:
    """SSv2 format with real (VP9 .webm) videos: squares pushed left to right, and pulled back right to left."""
    from step_cache.synthetic.videos import moving_square, write_video

    labels = ["Pushing something from left to right", "Pulling something from right to left"]
    write_json(root / "labels" / "labels.json", {name: str(i) for i, name in enumerate(labels)})
    templates = ["Pushing [something] from left to right", "Pulling [something] from right to left"]
    for split, ids in (("train", range(4)), ("validation", range(4, 6))):
        entries = [{"id": str(i), "template": templates[i % 2], "placeholders": ["box"]} for i in ids]
        write_json(root / "labels" / f"{split}.json", entries)
    for i in range(6):
        frames = moving_square(num_frames=12, direction=1 if i % 2 == 0 else -1, seed=i)
        write_video(root / "20bn-something-something-v2" / f"{i}.webm", frames, codec="libvpx-vp9")
    return root


def real_drive_act_tree(root: Path) -> Path:
    """Drive&Act format with real mp4 runs, each holding an 'opening' segment then its reverse, 'closing'."""
    import numpy as np

    from step_cache.synthetic.videos import moving_square, write_video

    folder = root / "activities_3s" / "kinect_color"
    for subset, participant in (("train", 1), ("val", 2), ("test", 3)):
        run = f"vp{participant}/run1_2018-05-2{participant}.kinect_color"
        forward = moving_square(num_frames=20, direction=1, seed=participant)
        write_video(root / "kinect_color" / f"{run}.mp4", np.concatenate([forward, forward[::-1]]))
        lines = [
            f"{participant},{run},0,0,20,opening_door_outside,0",
            f"{participant},{run},1,20,40,closing_door_outside,0",
        ]
        write_text(folder / f"midlevel.chunks_90.split_0.{subset}.csv", DRIVE_ACT_HEADER + "\n".join(lines) + "\n")
    return root


@needs_extract
@pytest.mark.parametrize("dataset", ["ssv2", "drive-act"])
def test_prepare_then_extract(tmp_path, dataset):
    root = real_ssv2_tree(tmp_path / "ssv2") if dataset == "ssv2" else real_drive_act_tree(tmp_path / "da")
    csv_path = tmp_path / "prepared" / "annotations.csv"
    result = run_app("prepare", dataset, "--root", root, "--out", csv_path)
    assert result.exit_code == 0, result.output
    items = read_annotations(csv_path, root)
    pairs = read_pairs(csv_path.parent / "pairs.txt")
    result = run_app(
        "extract", "--videos", root, "--annotations", csv_path, "--out", tmp_path / "shards", *TINY_EXTRACT
    )
    assert result.exit_code == 0, result.output
    result = run_app("inspect", tmp_path / "shards", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["failures"] == [] and summary["clips"] == len(items)
    assert summary["splits"] == {split: sum(i.split == split for i in items) for split in {i.split for i in items}}
    assert [tuple(pair) for pair in summary["pairs"]] == pairs and len(pairs) == 1


@needs_extract
@needs_train_probe
def test_prepare_extract_train_probe(tmp_path):
    # The train-probe options below follow the description; align them when the command lands.
    root = real_drive_act_tree(tmp_path / "da")
    csv_path = tmp_path / "annotations.csv"
    assert run_app("prepare", "drive-act", "--root", root, "--out", csv_path).exit_code == 0
    result = run_app(
        "extract", "--videos", root, "--annotations", csv_path, "--out", tmp_path / "shards", *TINY_EXTRACT
    )
    assert result.exit_code == 0, result.output
    result = run_app("train-probe", tmp_path / "shards", "--probe", "step", "--epochs", "2", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
