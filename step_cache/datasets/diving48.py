"""Diving48, V2 annotations (http://www.svcl.ucsd.edu/projects/resound/dataset.html).

Files (in ``root`` or ``root/annotations``):
- ``Diving48_V2_train.json`` / ``Diving48_V2_test.json``:
  ``[{"vid_name": "-mmq0PT-u8k_00155", "label": 0, "start_frame": 0, "end_frame": 48}, ...]``;
- ``Diving48_vocab.json``: 48 lists of sub-labels, ``[["Back", "15som", "05Twis", "FREE"], ...]``, class ``i`` is
  entry ``i``.
Videos: ``<vid_name>.mp4`` in ``rgb/``, ``videos/``, ``Diving48_rgb/`` or the videos root.

Class names join the four sub-labels with ``+`` ("Back+15som+05Twis+FREE"), as mmaction2's Diving48 label map does.
The released clips are already trimmed and public loaders read them whole, so ``start_frame``/``end_frame`` are
ignored unless ``use_frame_ranges`` asks for them (then kept as given, as a ``[start, end)`` segment).
"""

from __future__ import annotations

from pathlib import Path

from step_cache.catalog import VideoItem
from step_cache.datasets.adapter import (
    AdapterResult,
    DatasetError,
    Request,
    entry_field,
    find_file,
    join,
    json_list,
    search_dirs,
    unsupported,
    video_subdir,
    whole_number,
)
from step_cache.datasets.pairs import DIVING48_PAIRS

ANNOTATION_DIRS = ("", "annotations")
VIDEO_DIRS = ("rgb", "videos", "Diving48_rgb", "")
LIST_FILES = {"train": "Diving48_V2_train.json", "test": "Diving48_V2_test.json"}


def read_vocab(path: Path) -> list[str]:
    vocab = json_list(path)
    names = []
    for index, parts in enumerate(vocab):
        if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p for p in parts):
            raise DatasetError(f"{path}: entry {index}: expected a list of sub-label strings, got {parts!r}")
        names.append("+".join(parts))
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: duplicate class in the vocabulary")
    return names


def read(request: Request) -> AdapterResult:
    unsupported(request, split=request.split, view=request.view)
    dirs = search_dirs(request, ANNOTATION_DIRS)
    vocab_path = find_file(dirs, ("Diving48_vocab.json",), "Diving48 vocabulary")
    classes = read_vocab(vocab_path)
    sources = [vocab_path]
    rows: list[tuple[str, str, str, int | None, int | None]] = []
    for split, name in LIST_FILES.items():
        path = find_file([vocab_path.parent, *dirs], (name,), f"Diving48 {split} list")
        sources.append(path)
        for index, entry in enumerate(json_list(path)):
            video = entry_field(entry, "vid_name", path, index)
            label = entry_field(entry, "label", path, index, int)
            if not 0 <= label < len(classes):
                raise DatasetError(
                    f"{path}: entry {index} ({video}): label {label} is not in {vocab_path.name} "
                    f"(classes 0..{len(classes) - 1})"
                )
            start = end = None
            if request.use_frame_ranges:
                where = f"entry {index} ({video})"
                start = whole_number(entry_field(entry, "start_frame", path, index, int), path, where, "start_frame")
                end = whole_number(entry_field(entry, "end_frame", path, index, int), path, where, "end_frame")
                if end <= start:
                    raise DatasetError(f"{path}: {where}: end_frame ({end}) must be greater than start_frame ({start})")
            rows.append((video, classes[label], split, start, end))
    prefix = video_subdir(request.videos_root, VIDEO_DIRS, (f"{row[0]}.mp4" for row in rows))
    items = [
        VideoItem(join(prefix, f"{video}.mp4"), label, split, start, end) for video, label, split, start, end in rows
    ]
    return AdapterResult(items, sources, DIVING48_PAIRS)
