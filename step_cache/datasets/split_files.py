"""UCF101 and HMDB51: the two official "three train/test splits" text formats.

UCF101 (``ucfTrainTestlist/``, ``annotations/`` or ``root``):
- ``classInd.txt``: ``1 ApplyEyeMakeup`` lines (101 classes);
- ``trainlist0N.txt``: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``; ``testlist0N.txt``: the path only.
Videos: ``<Class>/v_<Class>_gXX_cYY.avi`` in ``UCF-101/``, ``UCF101/``, ``videos/`` or the videos root.

HMDB51 (``testTrainMulti_7030_splits/``, ``splits/``, ``annotations/`` or ``root``):
- ``<class>_test_splitN.txt`` for each of the 51 classes: ``<video>.avi <tag>`` lines, tag 1 = train, 2 = test,
  0 = not used in that split.
Videos: ``<class>/<video>.avi`` in ``hmdb51_org/``, ``hmdb51/``, ``videos/`` or the videos root.

Neither dataset has a validation split: use ``val_fraction`` to hold out part of train.
"""

from __future__ import annotations

import re
from pathlib import Path

from step_cache.catalog import VideoItem
from step_cache.datasets.adapter import (
    AdapterResult,
    DatasetError,
    Request,
    check_split,
    find_file,
    join,
    search_dirs,
    text_lines,
    unsupported,
    video_subdir,
)
from step_cache.datasets.pairs import HMDB51_PAIRS, UCF101_PAIRS

UCF101_ANNOTATION_DIRS = (
    "ucfTrainTestlist",
    "UCF101TrainTestSplits-RecognitionTask/ucfTrainTestlist",
    "annotations",
    "",
)
UCF101_VIDEO_DIRS = ("UCF-101", "UCF101", "videos", "")
HMDB51_ANNOTATION_DIRS = ("testTrainMulti_7030_splits", "splits", "annotations", "")
HMDB51_VIDEO_DIRS = ("hmdb51_org", "hmdb51", "videos", "")

HMDB51_CLASSES = (
    "brush_hair",
    "cartwheel",
    "catch",
    "chew",
    "clap",
    "climb",
    "climb_stairs",
    "dive",
    "draw_sword",
    "dribble",
    "drink",
    "eat",
    "fall_floor",
    "fencing",
    "flic_flac",
    "golf",
    "handstand",
    "hit",
    "hug",
    "jump",
    "kick",
    "kick_ball",
    "kiss",
    "laugh",
    "pick",
    "pour",
    "pullup",
    "punch",
    "push",
    "pushup",
    "ride_bike",
    "ride_horse",
    "run",
    "shake_hands",
    "shoot_ball",
    "shoot_bow",
    "shoot_gun",
    "sit",
    "situp",
    "smile",
    "smoke",
    "somersault",
    "stand",
    "swing_baseball",
    "sword",
    "sword_exercise",
    "talk",
    "throw",
    "turn",
    "walk",
    "wave",
)


def read_class_index(path: Path) -> dict[int, str]:
    classes: dict[int, str] = {}
    for line_no, line in text_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}:{line_no}: expected '<index> <ClassName>', got {line!r}")
        classes[int(parts[0])] = parts[1]
    if not classes:
        raise DatasetError(f"{path}: no classes")
    return classes


def _ucf_class(folder: str, by_name: dict[str, str], where: str, class_file: Path) -> str:
    # Some copies differ in case from classInd.txt (HandstandPushups vs HandStandPushups): match case-insensitively.
    if folder in by_name.values():
        return folder
    if folder.lower() in by_name:
        return by_name[folder.lower()]
    raise DatasetError(f"{where}: class {folder!r} is not in {class_file.name}")


def read_ucf101(request: Request) -> AdapterResult:
    unsupported(request, view=request.view, use_frame_ranges=request.use_frame_ranges)
    split = check_split(request, (1, 2, 3), default=1)
    dirs = search_dirs(request, UCF101_ANNOTATION_DIRS)
    class_file = find_file(dirs, ("classInd.txt",), "UCF101 class list")
    classes = read_class_index(class_file)
    by_name = {name.lower(): name for name in classes.values()}
    sources = [class_file]
    rows: list[tuple[str, str, str]] = []
    for subset, stem in (("train", "trainlist"), ("test", "testlist")):
        path = find_file([class_file.parent], (f"{stem}{split:02d}.txt",), f"UCF101 split {split} {subset} list")
        sources.append(path)
        for line_no, line in text_lines(path):
            parts = line.split()
            relative = parts[0].replace("\\", "/")
            where = f"{path}:{line_no}"
            if len(parts) > 2 or relative.count("/") != 1:
                raise DatasetError(f"{where}: expected '<Class>/<video>.avi[ <index>]', got {line!r}")
            label = _ucf_class(relative.split("/")[0], by_name, where, class_file)
            if len(parts) == 2:
                if not parts[1].isdigit() or int(parts[1]) not in classes:
                    raise DatasetError(f"{where}: class index {parts[1]!r} is not in {class_file.name}")
                if classes[int(parts[1])] != label:
                    raise DatasetError(
                        f"{where}: class index {parts[1]} is {classes[int(parts[1])]!r} in {class_file.name} "
                        f"but the video is in folder {relative.split('/')[0]!r}"
                    )
            rows.append((relative, label, subset))
    prefix = video_subdir(request.videos_root, UCF101_VIDEO_DIRS, (row[0] for row in rows))
    items = [VideoItem(join(prefix, relative), label, subset) for relative, label, subset in rows]
    return AdapterResult(items, sources, UCF101_PAIRS)


def read_hmdb51(request: Request) -> AdapterResult:
    unsupported(request, view=request.view, use_frame_ranges=request.use_frame_ranges)
    split = check_split(request, (1, 2, 3), default=1)
    dirs = search_dirs(request, HMDB51_ANNOTATION_DIRS)
    pattern = re.compile(rf"^(?P<label>.+)_test_split{split}\.txt$")
    files: list[Path] = []
    for directory in dirs:
        files = sorted(p for p in directory.glob(f"*_test_split{split}.txt") if p.is_file())
        if files:
            break
    if not files:
        raise DatasetError(
            f"HMDB51 split files not found: looked for <class>_test_split{split}.txt in {', '.join(map(str, dirs))}"
        )
    rows: list[tuple[str, str, str]] = []
    notes = []
    if len(files) != len(HMDB51_CLASSES):
        notes.append(f"{files[0].parent}: {len(files)} split files for split {split} (HMDB51 has 51 classes)")
    for path in files:
        label = pattern.match(path.name)["label"]
        for line_no, line in text_lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DatasetError(f"{path}:{line_no}: expected '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] != "0":
                rows.append((f"{label}/{parts[0]}", label, "train" if parts[1] == "1" else "test"))
    prefix = video_subdir(request.videos_root, HMDB51_VIDEO_DIRS, (row[0] for row in rows))
    items = [VideoItem(join(prefix, relative), label, subset) for relative, label, subset in rows]
    return AdapterResult(items, files, HMDB51_PAIRS, notes)
