"""The video catalogue: which videos to extract, with their labels, splits and optional segments.

Two sources, both giving the same ``VideoItem`` list:
- a folder tree ``ROOT/<class>/*.mp4`` (videos directly under ROOT are unlabelled);
- an annotation CSV with a header and columns ``path,label[,split][,start_frame,end_frame]``, paths relative
  to the videos root. ``end_frame`` is exclusive; empty cells mean "no split", "whole video". An empty label
  cell means "unlabelled" (extracted for ``predict``, never trained on) where that is what the row says: in a file
  without any label, on a ``test`` row, or on a row whose split cell is empty. Where it cannot be meant (a ``train``
  or ``val`` row, or any row of a labelled file without a ``split`` column) it is an error naming the line.

Mirrored class pairs live in a text file of ``class_a,class_b`` CSV lines (quote names that hold a comma;
lines starting with ``#`` are comments).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from step_cache.errors import StepCacheError
from step_cache.interface import option, switch

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
SPLITS = ("train", "val", "test")
ANNOTATION_COLUMNS = ("path", "label", "split", "start_frame", "end_frame")
SEGMENT_SUFFIX = re.compile(r"#\d*-\d*$")  # item keys of segments end in "#start-end" (VideoItem.key)


class CatalogError(StepCacheError, ValueError):
    """A problem with the list of videos or its annotations; the message names the file."""


@dataclass(frozen=True)
class VideoItem:
    """One unit of extraction: a whole video, or a segment ``[start_frame, end_frame)`` of it."""

    path: str  # relative to the videos root, with forward slashes
    label: str | None = None
    split: str | None = None
    start_frame: int | None = None
    end_frame: int | None = None
    # The group key an adapter read from its annotations (Drive&Act's participant_id: "subject:vp<N>"), which
    # prepare's hold-out uses instead of the one read from the path (datasets/groups.py); not a CSV column.
    group: str | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """Unique name of the item in shards and manifests (segments of one video get distinct keys)."""
        if self.start_frame is None and self.end_frame is None:
            return self.path
        start = "" if self.start_frame is None else self.start_frame
        end = "" if self.end_frame is None else self.end_frame
        return f"{self.path}#{start}-{end}"


def source_video(key: str) -> str:
    """The video file an item key comes from (segment suffix removed)."""
    return SEGMENT_SUFFIX.sub("", key)


def discover_videos(root: str | Path) -> list[VideoItem]:
    """Videos under ``root``: ``root/<class>/*`` are labelled ``<class>``, files directly in ``root`` unlabelled.

    Hidden entries are skipped; deeper folders are not searched (give an annotation CSV for other layouts).
    """
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"{root}: videos directory does not exist")
    items = []
    for path in sorted([*root.glob("*"), *root.glob("*/*")]):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            label = relative.parts[0] if len(relative.parts) == 2 else None
            items.append(VideoItem(path=relative.as_posix(), label=label))
    if not items:
        raise CatalogError(
            f"{root}: no videos found (looked for {', '.join(VIDEO_EXTENSIONS)} in {root}/<class>/; "
            f"for other layouts give {option('annotations')})"
        )
    return items


def _optional_int(value: str, csv_path: Path, line: int, column: str) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise CatalogError(f"{csv_path}:{line}: {column} must be an integer, got {value!r}") from None
    if number < 0:
        raise CatalogError(f"{csv_path}:{line}: {column} must be >= 0, got {number}")
    return number


def read_annotations(
    csv_path: str | Path, videos_root: str | Path | None = None, allow_outside: bool = False
) -> list[VideoItem]:
    """Read an annotation CSV (see module doc). Checks columns, duplicates, splits, segments, that no path leaves
    the videos root (absolute, or with ``..``) unless ``allow_outside`` and, when ``videos_root`` is given, that
    every listed file exists. A UTF-8 byte-order mark (spreadsheet exports) is accepted."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CatalogError(f"{csv_path}: annotation file does not exist")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise CatalogError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; expected a header with "
                f"path,label[,split][,start_frame,end_frame], got {','.join(columns) or 'an empty file'}"
            )
        if ("start_frame" in columns) != ("end_frame" in columns):
            raise CatalogError(f"{csv_path}: start_frame and end_frame columns must come together")
        unknown = [c for c in columns if c not in ANNOTATION_COLUMNS]
        if unknown:
            raise CatalogError(f"{csv_path}: unknown column(s) {', '.join(unknown)}")
        items: list[VideoItem] = []
        seen: dict[str, int] = {}
        unlabelled: list[tuple[int, str | None]] = []  # (line, split) of rows with an empty label cell
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            path = row["path"].replace("\\", "/")
            if not path:
                raise CatalogError(f"{csv_path}:{line}: empty path")
            if not allow_outside and (path.startswith("/") or ".." in PurePosixPath(path).parts):
                raise CatalogError(
                    f"{csv_path}:{line}: path {path} leaves the videos root (absolute or with '..'); paths are "
                    f"relative to {option('videos')}: move the file under it, or pass {switch('allow_outside')}"
                )
            split = row.get("split") or None
            if split is not None and split not in SPLITS:
                raise CatalogError(f"{csv_path}:{line}: split must be one of {', '.join(SPLITS)}, got {split!r}")
            start = _optional_int(row.get("start_frame", ""), csv_path, line, "start_frame")
            end = _optional_int(row.get("end_frame", ""), csv_path, line, "end_frame")
            if start is not None and end is not None and end <= start:
                raise CatalogError(f"{csv_path}:{line}: end_frame ({end}) must be greater than start_frame ({start})")
            item = VideoItem(path, row["label"] or None, split, start, end)
            if item.label is None:
                unlabelled.append((line, split))
            if item.key in seen:
                raise CatalogError(f"{csv_path}:{line}: duplicate row for {item.key} (first at line {seen[item.key]})")
            seen[item.key] = line
            if videos_root is not None and not (Path(videos_root) / path).is_file():
                raise CatalogError(f"{csv_path}:{line}: listed video {path} does not exist under {videos_root}")
            items.append(item)
    if not items:
        raise CatalogError(f"{csv_path}: no rows")
    _check_empty_labels(csv_path, unlabelled, labelled=len(items) > len(unlabelled), has_split="split" in columns)
    return items


def _check_empty_labels(
    csv_path: Path, unlabelled: list[tuple[int, str | None]], labelled: bool, has_split: bool
) -> None:
    """An empty label cell on a row meant for training or validation is a forgotten label: training would silently
    leave the clip out. Rows that say they are unlabelled (see the module doc) pass."""
    if not labelled:
        return  # a list of videos to classify
    forgotten = [line for line, split in unlabelled if split in ("train", "val") or not has_split]
    if forgotten:
        more = f" (and {len(forgotten) - 1} more row(s))" if len(forgotten) > 1 else ""
        keep = "leave its split cell empty or 'test'" if has_split else "add a split column, empty or 'test' there,"
        raise CatalogError(
            f"{csv_path}:{forgotten[0]}: column 'label' is empty{more}; give the class, or {keep} to keep the video "
            "unlabelled (classified by predict, never trained on)"
        )


def write_annotations(csv_path: str | Path, items: Iterable[VideoItem]) -> Path:
    """Write items as an annotation CSV that ``read_annotations`` reads back unchanged."""
    items = list(items)
    with_segments = any(i.start_frame is not None or i.end_frame is not None for i in items)
    columns = list(ANNOTATION_COLUMNS if with_segments else ANNOTATION_COLUMNS[:3])
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for item in items:
            row = [item.path, item.label or "", item.split or ""]
            if with_segments:
                row += [
                    "" if item.start_frame is None else item.start_frame,
                    "" if item.end_frame is None else item.end_frame,
                ]
            writer.writerow(row)
    return csv_path


def class_names(items: Sequence[VideoItem]) -> list[str]:
    """Sorted class names: the stable class -> index mapping stored in the manifest."""
    return sorted({item.label for item in items if item.label is not None})


def read_pairs(pairs_path: str | Path, classes: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """Read mirrored class pairs (``class_a,class_b`` per line); checks names against ``classes`` when given."""
    pairs_path = Path(pairs_path)
    if not pairs_path.is_file():
        raise CatalogError(f"{pairs_path}: pairs file does not exist")
    pairs: list[tuple[str, str]] = []
    used: set[str] = set()
    for line_no, raw in enumerate(pairs_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        names = [part.strip() for part in next(csv.reader([raw]))]  # CSV quoting allows commas in class names
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise CatalogError(f"{pairs_path}:{line_no}: expected two different class names 'a,b', got {raw!r}")
        for name in names:
            if classes is not None and name not in classes:
                raise CatalogError(f"{pairs_path}:{line_no}: class {name!r} is not among the classes {list(classes)}")
            if name in used:
                raise CatalogError(f"{pairs_path}:{line_no}: class {name!r} appears in more than one pair")
            used.add(name)
        pairs.append((names[0], names[1]))
    return pairs


def write_pairs(pairs_path: str | Path, pairs: Iterable[tuple[str, str]], header: str | None = None) -> Path:
    """Write mirrored pairs in the format ``read_pairs`` reads."""
    pairs_path = Path(pairs_path)
    buffer = io.StringIO()
    for line in (header or "").splitlines():
        buffer.write(f"# {line}\n")
    csv.writer(buffer, lineterminator="\n").writerows(pairs)
    pairs_path.write_text(buffer.getvalue(), encoding="utf-8")
    return pairs_path
