"""IKEA-ASM atomic actions (https://ikeaasm.github.io, code: github.com/IkeaASM/IKEA_ASM_Dataset).

Files:
- ``gt_segments.json`` from the action annotations (in ``action_annotations/``, ``annotations/`` or ``root``), in
  ActivityNet form: ``{"version": ..., "database": {"<Furniture>/<scan>": {"subset": "training" | "testing",
  "annotation": [{"segment": [start_frame, end_frame], "label": "pick up leg"}, ...]}}}``; the official code
  slices ``frames[start:end]``, so ``end_frame`` is exclusive;
- ``indexing_files/atomic_action_list.txt`` (optional): the 32 action names; ``NA`` (no action) is the 33rd class.
  When present every label must be in it.
Videos: ``<Furniture>/<scan>/<view>/images/scan_video.avi`` (view ``dev3``, the top view used by the official
baselines, unless ``--view dev1`` / ``dev2``), under the videos root or its ``ANU_ikea_dataset_video/`` or
``ANU_ikea_dataset/`` folder.

Each segment becomes one row with its ``start_frame``/``end_frame``; ``NA`` segments are kept as a class (the
official 33-class protocol). Zero-length segments are skipped and reported.
"""

from __future__ import annotations

from step_cache.catalog import VideoItem
from step_cache.datasets.adapter import (
    AdapterResult,
    DatasetError,
    Request,
    find_file,
    find_optional,
    join,
    read_json,
    search_dirs,
    text_lines,
    unsupported,
    video_subdir,
    whole_number,
)
from step_cache.datasets.pairs import IKEA_ASM_PAIRS
from step_cache.interface import option

ANNOTATION_DIRS = ("action_annotations", "annotations", "")
ACTION_LIST_DIRS = ("indexing_files", "ANU_ikea_dataset/indexing_files")
VIDEO_DIRS = ("", "ANU_ikea_dataset_video", "ANU_ikea_dataset")
VIEWS = ("dev1", "dev2", "dev3")
SUBSETS = {"training": "train", "train": "train", "validation": "val", "val": "val", "testing": "test", "test": "test"}

IKEA_ASM_ACTIONS = (
    "NA",
    "align leg screw with table thread",
    "align side panel holes with front panel dowels",
    "attach drawer back panel",
    "attach drawer side panel",
    "attach shelf to table",
    "flip shelf",
    "flip table",
    "flip table top",
    "insert drawer pin",
    "lay down back panel",
    "lay down bottom panel",
    "lay down front panel",
    "lay down leg",
    "lay down shelf",
    "lay down side panel",
    "lay down table top",
    "other",
    "pick up back panel",
    "pick up bottom panel",
    "pick up front panel",
    "pick up leg",
    "pick up pin",
    "pick up shelf",
    "pick up side panel",
    "pick up table top",
    "position the drawer right side up",
    "push table",
    "push table top",
    "rotate table",
    "slide bottom of drawer",
    "spin leg",
    "tighten leg",
)


def read(request: Request) -> AdapterResult:
    unsupported(request, split=request.split, use_frame_ranges=request.use_frame_ranges)
    view = request.view or "dev3"
    if view not in VIEWS:
        raise DatasetError(f"ikea-asm: {option('view')} must be one of {', '.join(VIEWS)}, got {view!r}")
    dirs = search_dirs(request, ANNOTATION_DIRS)
    path = find_file(dirs, ("gt_segments.json",), "IKEA-ASM action segments")
    sources = [path]
    notes = []
    list_dirs = [request.root / d for d in ACTION_LIST_DIRS] + [path.parent]
    action_list = find_optional(list_dirs, ("atomic_action_list.txt",))
    allowed = None
    if action_list is not None:
        allowed = {line for _, line in text_lines(action_list)} | {"NA"}
        sources.append(action_list)
    else:
        notes.append("atomic_action_list.txt not found: labels were not checked against the action list")

    data = read_json(path)
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise DatasetError(f"{path}: expected an object with a 'database' object (ActivityNet format)")
    rows: list[tuple[str, str, str, int, int]] = []
    skipped = 0
    for scan, video in database.items():
        where = f"video {scan!r}"
        if not isinstance(video, dict) or not isinstance(video.get("annotation"), list):
            raise DatasetError(f"{path}: {where}: expected an object with an 'annotation' list")
        subset = SUBSETS.get(str(video.get("subset", "")).lower())
        if subset is None:
            raise DatasetError(
                f"{path}: {where}: subset must be training, validation or testing, got {video.get('subset')!r}"
            )
        for index, segment in enumerate(video["annotation"]):
            at = f"{where}, segment {index}"
            if not isinstance(segment, dict) or not isinstance(segment.get("label"), str):
                raise DatasetError(f"{path}: {at}: expected an object with a 'label' string")
            bounds = segment.get("segment")
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise DatasetError(f"{path}: {at}: 'segment' must be [start_frame, end_frame], got {bounds!r}")
            start = whole_number(bounds[0], path, at, "start_frame")
            end = whole_number(bounds[1], path, at, "end_frame")
            label = segment["label"]
            if allowed is not None and label not in allowed:
                raise DatasetError(f"{path}: {at}: label {label!r} is not in {action_list}")
            if end <= start:
                skipped += 1
                continue
            rows.append((scan, label, subset, start, end))
    if skipped:
        notes.append(f"{path}: skipped {skipped} zero-length segment(s)")

    def video_path(scan: str) -> str:
        return f"{scan}/{view}/images/scan_video.avi"

    prefix = video_subdir(request.videos_root, VIDEO_DIRS, (video_path(row[0]) for row in rows))
    items = [
        VideoItem(join(prefix, video_path(scan)), label, subset, start, end) for scan, label, subset, start, end in rows
    ]
    return AdapterResult(items, sources, IKEA_ASM_PAIRS, notes)
