"""What every dataset adapter shares: the request it receives, the result it returns, and careful readers for the
annotation files (every error is one line naming the file and, where it can, the line or entry).

An adapter only *reads* annotations and says which video each row refers to (a path relative to the videos root);
``step_cache.datasets.prepare`` then checks the videos exist, applies optional hold-out splits and writes the CSV.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from step_cache.catalog import CatalogError, VideoItem
from step_cache.datasets.pairs import MirroredPair
from step_cache.interface import option


class DatasetError(CatalogError):
    """A dataset's files are missing or malformed; the message names the file (and line or entry)."""


@dataclass(frozen=True)
class Request:
    """Everything an adapter may use. Options an adapter does not support must be left at their defaults."""

    dataset: str
    root: Path  # the dataset root given by the user
    videos_root: Path  # CSV paths are relative to this (``--videos``, default: ``root``)
    annotations: Path | None = None  # ``--annotations``: a directory (or file) overriding the default search
    split: int | None = None  # the dataset's official split number, where it has several
    view: str | None = None  # camera view, for multi-view datasets
    use_frame_ranges: bool = False  # Diving48 only: keep start_frame/end_frame as segments


@dataclass
class AdapterResult:
    items: list[VideoItem]  # paths relative to the videos root (not yet checked for existence)
    sources: list[Path]  # annotation files read
    pairs: Sequence[MirroredPair] = ()
    notes: list[str] = field(default_factory=list)  # things the user should know (skipped rows, guesses)


def unsupported(request: Request, **options: object) -> None:
    """Fail clearly when an option is given to an adapter that has no use for it."""
    defaults = {"split": None, "view": None, "use_frame_ranges": False, "annotations": None}
    for name, value in options.items():
        if value != defaults[name]:
            raise DatasetError(f"{request.dataset}: {option(name)} does not apply to this dataset")


def check_split(request: Request, allowed: Sequence[int], default: int) -> int:
    split = default if request.split is None else request.split
    if split not in allowed:
        raise DatasetError(
            f"{request.dataset}: {option('split')} must be one of {', '.join(map(str, allowed))} (official splits), "
            f"got {split}"
        )
    return split


def search_dirs(request: Request, subdirs: Sequence[str]) -> list[Path]:
    """Where to look for annotation files: ``--annotations`` if given, else ``root/<subdir>`` for each candidate."""
    if request.annotations is not None:
        if not request.annotations.exists():
            raise DatasetError(f"{request.annotations}: annotations directory does not exist")
        return [request.annotations if request.annotations.is_dir() else request.annotations.parent]
    return [request.root / sub if sub else request.root for sub in subdirs]


def find_file(dirs: Sequence[Path], names: Sequence[str], what: str) -> Path:
    """The first ``dir/name`` that exists, or an error listing where it looked."""
    found = find_optional(dirs, names)
    if found is None:
        raise DatasetError(f"{what} not found: looked for {' or '.join(names)} in {', '.join(str(d) for d in dirs)}")
    return found


def find_optional(dirs: Sequence[Path], names: Sequence[str]) -> Path | None:
    for directory in dirs:
        for name in names:
            if (directory / name).is_file():
                return directory / name
    return None


def video_subdir(videos_root: Path, candidates: Sequence[str], probes: Iterable[str]) -> str:
    """The sub-folder of ``videos_root`` holding the videos, as a path prefix ('' for the root itself).

    Picks the first candidate in which one of the first few listed videos (``probes``) exists, so that a layout
    is recognised even when many videos are missing; falls back to the first candidate folder that exists.
    """
    probes = [p for _, p in zip(range(50), probes, strict=False)]
    existing = [c for c in candidates if (videos_root / c).is_dir()]
    for candidate in existing:
        if any((videos_root / candidate / probe).is_file() for probe in probes):
            return candidate
    return existing[0] if existing else ""


def join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from None


def json_list(path: Path) -> list[Any]:
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return data


def entry_field(entry: Any, key: str, path: Path, index: int, kind: type | tuple[type, ...] = str) -> Any:
    """``entry[key]`` of a JSON list entry, checked for presence and type."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: entry {index}: expected an object, got {json.dumps(entry)[:60]}")
    if key not in entry:
        raise DatasetError(f"{path}: entry {index}: missing key {key!r}")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetError(f"{path}: entry {index}: {key!r} has the wrong type ({json.dumps(value)[:60]})")
    return value


def whole_number(value: Any, path: Path, where: str, name: str) -> int:
    """A whole number >= 0 (a frame index or a time in seconds) from JSON or CSV text; accepts ``12`` and ``12.0``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: {where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or number != int(number):
        raise DatasetError(f"{path}: {where}: {name} must be a whole number >= 0, got {value!r}")
    return int(number)


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-empty, stripped lines with their 1-based numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")  # some old split files are not UTF-8
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({error.strerror})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield number, line


def csv_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header, as stripped dicts with their line numbers; checks required columns."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as error:
        raise DatasetError(f"{path}: cannot read ({error.strerror})") from None
    with handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)}; got header {','.join(columns) or '(empty file)'}"
            )
        for row in reader:
            if None in row:  # more cells than header columns
                cells = len(columns) + len(row[None])
                raise DatasetError(f"{path}:{reader.line_num}: {cells} cells for {len(columns)} columns")
            yield reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in row.items()}
