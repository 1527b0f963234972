"""Kinetics-style CSV lists (Kinetics-400/600/700, and any list in the same format).

Files: every ``*.csv`` in ``--annotations`` (a directory, or one CSV file), else in ``root/annotations`` or ``root``,
whose header has ``youtube_id,time_start,time_end`` (plus ``label`` and ``split``; ``is_cc`` and other columns are
ignored). Rows without a label (the held-out test lists) become unlabelled rows. Without a ``split`` column the
split is taken from the file name (``train``, ``val``/``validate``/``validation``, ``test``).

Videos are named as the ActivityNet downloader names them, ``<youtube_id>_<time_start:06d>_<time_end:06d>`` with any
video extension, and may lie anywhere under the videos root: flat, in class folders (the label as is or with ``_``
for spaces), or in split folders. The videos root is indexed once by file name; when a name occurs twice, the copy
in a folder named after the label wins. Videos not found are reported under their flat name ``<name>.mp4``.
"""

from __future__ import annotations

import os
from pathlib import Path

from step_cache.catalog import VIDEO_EXTENSIONS, VideoItem
from step_cache.datasets.adapter import AdapterResult, DatasetError, Request, csv_rows, unsupported, whole_number

REQUIRED = ("youtube_id", "time_start", "time_end")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def clip_name(youtube_id: str, start: int, end: int) -> str:
    return f"{youtube_id}_{start:06d}_{end:06d}"


def annotation_files(request: Request) -> list[Path]:
    if request.annotations is not None:
        if request.annotations.is_file():
            return [request.annotations]
        if not request.annotations.is_dir():
            raise DatasetError(f"{request.annotations}: annotations directory does not exist")
        dirs = [request.annotations]
    else:
        dirs = [request.root / "annotations", request.root]
    for directory in dirs:
        candidates = sorted(directory.glob("*.csv")) if directory.is_dir() else []
        files = [path for path in candidates if _is_kinetics_csv(path)]
        if files:
            return files
    raise DatasetError(
        f"Kinetics CSV lists not found: no *.csv with columns {','.join(REQUIRED)} in {', '.join(map(str, dirs))}"
    )


def _is_kinetics_csv(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as handle:
            header = [cell.strip() for cell in handle.readline().split(",")]
    except (OSError, UnicodeDecodeError):
        return False
    return all(column in header for column in REQUIRED)


def index_videos(videos_root: Path) -> dict[str, list[str]]:
    """Video file stem -> relative paths, over the whole videos root (one walk, not one lookup per row)."""
    index: dict[str, list[str]] = {}
    for directory, _, names in os.walk(videos_root):
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext.lower() in VIDEO_EXTENSIONS:
                relative = Path(directory, name).relative_to(videos_root).as_posix()
                index.setdefault(stem, []).append(relative)
    return index


def _choose(paths: list[str], label: str | None) -> str:
    if len(paths) > 1 and label:
        for path in sorted(paths):
            parent = path.rsplit("/", 2)[-2] if "/" in path else ""
            if parent in (label, label.replace(" ", "_")):
                return path
    return sorted(paths)[0]


def read(request: Request) -> AdapterResult:
    unsupported(request, split=request.split, view=request.view, use_frame_ranges=request.use_frame_ranges)
    files = annotation_files(request)
    index = index_videos(request.videos_root)
    items: list[VideoItem] = []
    for path in files:
        file_split = next(
            (SPLIT_NAMES[part] for part in path.stem.lower().replace("-", "_").split("_") if part in SPLIT_NAMES), None
        )
        for line_no, row in csv_rows(path, REQUIRED):
            where = f"line {line_no}"
            if not row["youtube_id"]:
                raise DatasetError(f"{path}:{line_no}: empty youtube_id")
            start = whole_number(row["time_start"], path, where, "time_start")
            end = whole_number(row["time_end"], path, where, "time_end")
            raw_split = row.get("split", "").lower()
            split = SPLIT_NAMES.get(raw_split) if raw_split else file_split
            if split is None:
                raise DatasetError(
                    f"{path}:{line_no}: split must be one of {', '.join(sorted(SPLIT_NAMES))}"
                    + (f", got {raw_split!r}" if raw_split else " (no split column, and none in the file name)")
                )
            label = row.get("label") or None
            name = clip_name(row["youtube_id"], start, end)
            relative = _choose(index[name], label) if name in index else f"{name}.mp4"
            items.append(VideoItem(relative, label, split))
    return AdapterResult(items, files)
