"""Something-Something v2 (20BN / Qualcomm release).

Files (in ``root/labels/``, ``root/annotations/``, ``root/20bn-something-something-v2-labels/`` or ``root``; the
older ``something-something-v2-<name>.json`` names are accepted too):
- ``labels.json``: ``{"<template without brackets>": "<id>", ...}`` (174 classes);
- ``train.json`` / ``validation.json``: ``[{"id": "78687", "label": "holding potato next to ...",
  "template": "Holding [something] next to [something]", "placeholders": [...]}, ...]``;
- ``test.json``: ``[{"id": "1420"}, ...]`` and, if present, ``test-answers.csv`` with ``id;template`` lines.
Videos: ``<id>.webm`` in ``20bn-something-something-v2/``, ``videos/`` or the videos root itself.

Class names are the templates with the ``[ ]`` removed, exactly as ``labels.json`` spells them (e.g. "Pushing
something from left to right"): CSV-safe strings (commas are quoted), not single tokens.
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
    find_optional,
    join,
    json_list,
    read_json,
    search_dirs,
    text_lines,
    unsupported,
    video_subdir,
)
from step_cache.datasets.pairs import SSV2_PAIRS
from step_cache.datasets.ssv2_labels import SSV2_LABELS

ANNOTATION_DIRS = ("labels", "annotations", "20bn-something-something-v2-labels", "")
VIDEO_DIRS = ("20bn-something-something-v2", "videos", "")
LIST_FILES = {"train": "train", "val": "validation", "test": "test"}


def _names(stem: str) -> tuple[str, str]:
    return f"{stem}.json", f"something-something-v2-{stem}.json"


def template_to_label(template: str) -> str:
    """SSv2's own normalisation: the label of a template is the template without its placeholder brackets."""
    return template.replace("[", "").replace("]", "")


def read_labels(path: Path) -> set[str]:
    data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"{path}: expected a JSON object mapping each template to its class id")
    for name, index in data.items():
        if not isinstance(index, str | int) or not str(index).isdigit():
            raise DatasetError(f"{path}: class {name!r} has a non-numeric id {index!r}")
    return set(data)


def read(request: Request) -> AdapterResult:
    unsupported(request, split=request.split, view=request.view, use_frame_ranges=request.use_frame_ranges)
    dirs = search_dirs(request, ANNOTATION_DIRS)
    labels_path = find_file(dirs, _names("labels"), "SSv2 label file")
    labels = read_labels(labels_path)
    sources = [labels_path]
    notes = []
    unknown = sorted(labels - set(SSV2_LABELS))
    if unknown:
        notes.append(f"{labels_path}: {len(unknown)} class(es) not in the official 174, e.g. {unknown[0]!r}")

    rows: list[tuple[str, str, str]] = []  # (video id, label, split)
    for split in ("train", "val"):
        path = find_file([labels_path.parent, *dirs], _names(LIST_FILES[split]), f"SSv2 {split} list")
        sources.append(path)
        for index, entry in enumerate(json_list(path)):
            video_id = str(entry_field(entry, "id", path, index, (str, int)))
            label = template_to_label(entry_field(entry, "template", path, index))
            if label not in labels:
                raise DatasetError(
                    f"{path}: entry {index} (id {video_id}): template {entry['template']!r} "
                    f"is not in {labels_path.name}"
                )
            rows.append((video_id, label, split))

    test_path = find_optional([labels_path.parent, *dirs], _names("test"))
    answers_path = find_optional([labels_path.parent, *dirs], ("test-answers.csv",))
    if test_path is not None and answers_path is None:
        notes.append(f"{test_path}: skipped, no test-answers.csv beside it to label the test videos")
    elif test_path is not None and answers_path is not None:
        answers = _read_answers(answers_path, labels, labels_path)
        sources += [test_path, answers_path]
        for index, entry in enumerate(json_list(test_path)):
            video_id = str(entry_field(entry, "id", test_path, index, (str, int)))
            if video_id not in answers:
                raise DatasetError(
                    f"{test_path}: entry {index}: video id {video_id} has no line in {answers_path.name}"
                )
            rows.append((video_id, answers[video_id], "test"))

    prefix = video_subdir(request.videos_root, VIDEO_DIRS, (f"{video_id}.webm" for video_id, _, _ in rows))
    items = [VideoItem(join(prefix, f"{video_id}.webm"), label, split) for video_id, label, split in rows]
    return AdapterResult(items, sources, SSV2_PAIRS, notes)


def _read_answers(path: Path, labels: set[str], labels_path: Path) -> dict[str, str]:
    answers = {}
    for line_no, line in text_lines(path):
        video_id, sep, label = line.partition(";")
        if not sep or not video_id.strip().isdigit():
            raise DatasetError(f"{path}:{line_no}: expected 'id;label', got {line!r}")
        label = template_to_label(label.strip())
        if label not in labels:
            raise DatasetError(f"{path}:{line_no}: label {label!r} is not in {labels_path.name}")
        answers[video_id.strip()] = label
    return answers
