"""Drive&Act, fine-grained ("mid-level") activities in 3-second chunks, the benchmark protocol of the dataset.

Files: ``activities_3s/<view>/midlevel.chunks_90.split_N.{train,val,test}.csv`` (N = 0, 1, 2: the three official
splits by participant) with the header
``participant_id,file_id,annotation_id,frame_start,frame_end,activity,chunk_id``; one row per chunk of at most 90
frames, ``frame_end`` exclusive (consecutive chunks share their boundary). The CSVs are found anywhere under the
root (or in ``--annotations``); when several views have them, ``--view`` picks one (``kinect_color``,
``inner_mirror``, ``kinect_ir``, ...).
Videos: ``<file_id>.mp4`` (``file_id`` looks like ``vp1/run1b_2018-05-29-14-02-47.kinect_color``) in the folder
named after the view (``<videos root>/<view>/vp1/...``) or directly under the videos root.

Every chunk becomes one row with its ``start_frame``/``end_frame``, grouped (``datasets/groups.py``) by its
``participant_id`` (``1`` or ``vp1``: ``subject:vp1``), or by the ``vp<N>`` folder of its ``file_id`` where the
column is absent or empty; class names are the activity strings as written
(snake_case, one with a space: ``looking_or_moving_around (e.g. searching)``). Activities are not checked against a
list: the CSVs are the label set (34 classes in the benchmark, a few rare extra ones such as ``closing_backpack``
in some files).
"""

from __future__ import annotations

from pathlib import Path

from step_cache.catalog import VideoItem
from step_cache.datasets.adapter import (
    AdapterResult,
    DatasetError,
    Request,
    check_split,
    csv_rows,
    join,
    unsupported,
    video_subdir,
    whole_number,
)
from step_cache.datasets.pairs import DRIVE_ACT_PAIRS
from step_cache.interface import option

REQUIRED = ("file_id", "frame_start", "frame_end", "activity")
SPLIT_FILES = ("train", "val", "test")

# The 34 mid-level activities of the Drive&Act benchmark (used to check the reviewed pairs).
DRIVE_ACT_ACTIVITIES = (
    "closing_bottle",
    "closing_door_inside",
    "closing_door_outside",
    "closing_laptop",
    "drinking",
    "eating",
    "entering_car",
    "exiting_car",
    "fastening_seat_belt",
    "fetching_an_object",
    "interacting_with_phone",
    "looking_or_moving_around (e.g. searching)",
    "opening_backpack",
    "opening_bottle",
    "opening_door_inside",
    "opening_door_outside",
    "opening_laptop",
    "placing_an_object",
    "preparing_food",
    "pressing_automation_button",
    "putting_laptop_into_backpack",
    "putting_on_jacket",
    "putting_on_sunglasses",
    "reading_magazine",
    "reading_newspaper",
    "sitting_still",
    "taking_laptop_from_backpack",
    "taking_off_jacket",
    "taking_off_sunglasses",
    "talking_on_phone",
    "unfastening_seat_belt",
    "using_multimedia_display",
    "working_on_laptop",
    "writing",
)
# Rare activities seen in public loaders of the full mid-level files, outside the 34 benchmark classes.
DRIVE_ACT_EXTRA_ACTIVITIES = (
    "closing_backpack",
    "looking_back_left_shoulder",
    "looking_back_right_shoulder",
    "moving_towards_door",
    "standing_by_the_door",
)


def annotation_dir(request: Request, split: int) -> Path:
    name = f"midlevel.chunks_90.split_{split}.train.csv"
    base = request.annotations if request.annotations is not None else request.root
    if not base.is_dir():
        raise DatasetError(f"{base}: annotations directory does not exist")
    found = sorted({path.parent for path in base.rglob(name)})
    if request.view is not None:
        found = [d for d in found if d.name == request.view]
    if not found:
        view = f" for view {request.view!r}" if request.view else ""
        raise DatasetError(f"Drive&Act split file not found{view}: no {name} under {base}")
    if len(found) > 1:
        views = ", ".join(d.name for d in found)
        raise DatasetError(f"{base}: {name} found for several views ({views}); choose one with {option('view')}")
    return found[0]


def participant(value: str | None) -> str | None:
    """The group key (``datasets/groups.py``) of a ``participant_id`` cell: ``subject:vp<N>`` for ``N`` or
    ``vp<N>``, ``subject:<value>`` for another name; None for an empty cell or no column (the path's ``vp<N>``
    folder is used then)."""
    if not value:
        return None
    return f"subject:vp{int(value)}" if value.isdigit() else f"subject:{value.lower()}"


def read(request: Request) -> AdapterResult:
    unsupported(request, use_frame_ranges=request.use_frame_ranges)
    split = check_split(request, (0, 1, 2), default=0)
    directory = annotation_dir(request, split)
    sources = []
    rows: list[tuple[str, str, str, int, int, str | None]] = []
    for subset in SPLIT_FILES:
        path = directory / f"midlevel.chunks_90.split_{split}.{subset}.csv"
        if not path.is_file():
            raise DatasetError(f"{path}: Drive&Act split file does not exist (split {split}, {subset})")
        sources.append(path)
        for line_no, row in csv_rows(path, REQUIRED):
            where = f"line {line_no}"
            if not row["file_id"] or not row["activity"]:
                raise DatasetError(f"{path}:{line_no}: empty file_id or activity")
            start = whole_number(row["frame_start"], path, where, "frame_start")
            end = whole_number(row["frame_end"], path, where, "frame_end")
            if end <= start:
                raise DatasetError(f"{path}:{line_no}: frame_end ({end}) must be greater than frame_start ({start})")
            rows.append((row["file_id"], row["activity"], subset, start, end, participant(row.get("participant_id"))))
    # Videos of a view live in a folder named like the view's annotation folder (but not in that folder itself).
    view_dir = request.videos_root / directory.name
    candidates = (directory.name, "") if view_dir.resolve() != directory.resolve() else ("",)
    prefix = video_subdir(request.videos_root, candidates, (f"{row[0]}.mp4" for row in rows))
    items = [
        VideoItem(join(prefix, f"{file_id}.mp4"), activity, subset, start, end, group)
        for file_id, activity, subset, start, end, group in rows
    ]
    unknown = sorted({row[1] for row in rows} - set(DRIVE_ACT_ACTIVITIES) - set(DRIVE_ACT_EXTRA_ACTIVITIES))
    notes = []
    if unknown:  # accepted (the files are the label set), but worth a look: another annotation level?
        notes.append(
            f"{directory}: {len(unknown)} activity name(s) outside the known mid-level list, e.g. {unknown[0]!r}"
        )
    return AdapterResult(items, sources, DRIVE_ACT_PAIRS, notes)
