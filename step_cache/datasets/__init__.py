"""Public action datasets in, the project's annotation CSV (and mirrored pairs) out.

``prepare("ssv2", root, "annotations.csv")`` reads a dataset's own annotation files, checks which listed videos exist
(absent ones are recorded and skipped, or fatal with ``strict``), optionally holds out a stratified val/test split,
and writes ``path,label,split[,start_frame,end_frame]`` rows (paths relative to the videos root) with
``catalog.write_annotations``; where the dataset has reviewed mirrored pairs whose two classes occur, it also writes
``pairs.txt`` beside the CSV. See ``docs/datasets.md`` for every format and decision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from step_cache.catalog import VideoItem, class_names, read_pairs, write_annotations, write_pairs
from step_cache.datasets import diving48, drive_act, folder, ikea_asm, kinetics, split_files, ssv2
from step_cache.datasets.adapter import AdapterResult, DatasetError, Request
from step_cache.datasets.holdout import holdout
from step_cache.datasets.pairs import pairs_present
from step_cache.interface import option

__all__ = ["ADAPTERS", "DatasetError", "PreparedDataset", "prepare"]


@dataclass(frozen=True)
class Adapter:
    read: Callable[[Request], AdapterResult]
    description: str


ADAPTERS: dict[str, Adapter] = {
    "ssv2": Adapter(ssv2.read, "Something-Something v2: labels.json + train/validation(/test) JSON lists"),
    "diving48": Adapter(diving48.read, "Diving48 V2: Diving48_V2_{train,test}.json + Diving48_vocab.json"),
    "ucf101": Adapter(split_files.read_ucf101, "UCF101: classInd.txt + trainlist0N/testlist0N.txt (--split 1..3)"),
    "hmdb51": Adapter(split_files.read_hmdb51, "HMDB51: <class>_test_splitN.txt files (--split 1..3)"),
    "kinetics": Adapter(kinetics.read, "Kinetics-style CSV: label,youtube_id,time_start,time_end,split"),
    "folder": Adapter(folder.read, "one folder per class (optionally inside train/val/test folders)"),
    "drive-act": Adapter(drive_act.read, "Drive&Act mid-level activities, 3 s chunks (--split 0..2, --view)"),
    "ikea-asm": Adapter(ikea_asm.read, "IKEA-ASM atomic action segments: gt_segments.json (--view dev1..3)"),
}


@dataclass
class PreparedDataset:
    dataset: str
    annotations: Path  # the CSV written
    videos_root: Path  # CSV paths are relative to it: give it to extraction
    items: list[VideoItem]  # rows written
    missing: list[str] = field(default_factory=list)  # listed videos absent under videos_root (rows skipped)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # mirrored pairs written
    pairs_path: Path | None = None
    sources: list[Path] = field(default_factory=list)  # the dataset's annotation files that were read
    notes: list[str] = field(default_factory=list)
    groups_kept: int | None = None  # with a hold-out: groups of several videos kept in one split (holdout.py)

    def split_counts(self) -> dict[str, int]:
        counts = Counter(item.split or "(none)" for item in self.items)
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        """A few lines for the command line."""
        splits = ", ".join(f"{split} {count}" for split, count in self.split_counts().items())
        lines = [
            f"{self.dataset}: wrote {len(self.items)} rows ({splits}) with {len(class_names(self.items))} classes "
            f"to {self.annotations}",
            f"paths are relative to the videos root {self.videos_root}",
        ]
        if self.missing:
            lines.append(f"{len(self.missing)} listed video(s) missing and skipped, e.g. {self.missing[0]}")
        if self.groups_kept is not None:
            lines.append(
                f"held out by group: {self.groups_kept} group(s) of several videos (same file name across class "
                "folders, UCF101 v_X_gNN, HMDB51 source movie, Drive&Act participant vpN) kept whole in one split"
            )
        if self.pairs_path is not None:
            lines.append(f"{len(self.pairs)} mirrored pair(s) written to {self.pairs_path}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def dataset_names() -> list[str]:
    return list(ADAPTERS)


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path,
    split: int | None = None,
    *,
    annotations: str | Path | None = None,
    videos: str | Path | None = None,
    view: str | None = None,
    use_frame_ranges: bool = False,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    seed: int = 0,
    strict: bool = False,
    pairs_out: str | Path | None = None,
    progress: bool = True,
) -> PreparedDataset:
    """Convert a dataset's annotations into the project's annotation CSV (see the module doc).

    ``split`` is the dataset's official split number where it has several (UCF101/HMDB51 1..3, Drive&Act 0..2);
    ``annotations`` / ``videos`` override where annotation files and videos are looked for (default: under ``root``);
    ``val_fraction`` / ``test_fraction`` hold out a stratified random part of train (``seed``), groups of videos
    whole (``holdout.py``); ``strict`` makes a missing video an error instead of a skipped row; ``pairs_out``
    overrides ``<out dir>/pairs.txt``.
    """
    name, request = _request(dataset, root, annotations, videos, split, view, use_frame_ranges)
    result = ADAPTERS[name].read(request)
    notes = list(result.notes)
    items = _unlabelled_out_of_training(_drop_duplicates(result.items, notes), notes)
    present, missing = _present_videos(name, items, request.videos_root, strict, progress)
    held = holdout(present, val_fraction, test_fraction, seed)
    out = Path(out)
    write_annotations(out, held.items)
    pairs, pairs_path = _write_pairs(name, result.pairs, held.items, out, pairs_out)
    return PreparedDataset(
        name, out, request.videos_root, held.items, missing, pairs, pairs_path, result.sources, notes,
        groups_kept=held.groups_kept if val_fraction or test_fraction else None,
    )  # fmt: skip


def _request(
    dataset: str,
    root: str | Path,
    annotations: str | Path | None,
    videos: str | Path | None,
    split: int | None,
    view: str | None,
    use_frame_ranges: bool,
) -> tuple[str, Request]:
    """(adapter name, what to read), after refusing an unknown dataset and missing folders."""
    name = dataset.strip().lower().replace("_", "-")
    if name not in ADAPTERS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose one of {', '.join(ADAPTERS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist")
    videos_root = Path(videos) if videos is not None else root
    if not videos_root.is_dir():
        raise DatasetError(f"{videos_root}: videos directory does not exist")
    request = Request(
        dataset=name,
        root=root,
        videos_root=videos_root,
        annotations=Path(annotations) if annotations is not None else None,
        split=split,
        view=view,
        use_frame_ranges=use_frame_ranges,
    )
    return name, request


def _present_videos(
    name: str, items: list[VideoItem], videos_root: Path, strict: bool, progress: bool
) -> tuple[list[VideoItem], list[str]]:
    """(rows whose video exists, listed videos that do not); missing ones are fatal with ``strict``."""
    present, missing = [], []
    exists: dict[str, bool] = {}
    for item in tqdm(items, desc=f"{name}: checking videos", unit="row", disable=not progress or len(items) < 5000):
        if item.path not in exists:
            exists[item.path] = (videos_root / item.path).is_file()
            if not exists[item.path]:
                missing.append(item.path)
        if exists[item.path]:
            present.append(item)
    if missing and strict:
        raise DatasetError(
            f"{videos_root}: {len(missing)} listed video(s) do not exist, e.g. {missing[0]} "
            f"(drop {option('strict')} to skip them)"
        )
    if not present:
        raise DatasetError(
            f"{videos_root}: none of the {len(items)} listed videos exist"
            + (f", e.g. {missing[0]}" if missing else "")
            + f" (wrong {option('root')} or {option('videos')}?)"
        )
    return present, missing


def _write_pairs(
    name: str, listed: list[tuple[str, str]], items: list[VideoItem], out: Path, pairs_out: str | Path | None
) -> tuple[list[tuple[str, str]], Path | None]:
    """The dataset's reviewed mirrored pairs whose two classes occur, written to ``pairs.txt`` (or ``pairs_out``)."""
    pairs = pairs_present(listed, class_names(items))
    if not pairs:
        return pairs, None
    pairs_path = Path(pairs_out) if pairs_out is not None else out.parent / "pairs.txt"
    pairs_path.parent.mkdir(parents=True, exist_ok=True)
    header = f"Mirrored class pairs of {name}, reviewed list from step_cache/datasets/pairs.py (docs/datasets.md)"
    write_pairs(pairs_path, pairs, header=header)
    read_pairs(pairs_path, class_names(items))  # the file must read back against the written classes
    return pairs, pairs_path


def _unlabelled_out_of_training(items: list[VideoItem], notes: list[str]) -> list[VideoItem]:
    """Unlabelled videos of a train or val list (loose files in a split folder) lose that split: no training can use
    them, and an annotations CSV refuses an empty label on a train/val row (``catalog``); they stay, unlabelled."""
    moved = sum(item.label is None and item.split in ("train", "val") for item in items)
    if not moved:
        return items
    notes.append(f"{moved} unlabelled video(s) of train/val lists written without a split (predicted, never trained)")
    return [
        replace(item, split=None) if item.label is None and item.split in ("train", "val") else item for item in items
    ]


def _drop_duplicates(items: list[VideoItem], notes: list[str]) -> list[VideoItem]:
    """One row per key (video or segment): annotation files sometimes list a clip twice."""
    first: dict[str, VideoItem] = {}
    conflicts = repeats = 0
    for item in items:
        if item.key not in first:
            first[item.key] = item
        elif first[item.key].label != item.label or first[item.key].split != item.split:
            conflicts += 1
        else:
            repeats += 1
    if repeats:
        notes.append(f"dropped {repeats} repeated row(s)")
    if conflicts:
        notes.append(f"dropped {conflicts} row(s) repeating a clip with another label or split (kept the first)")
    return list(first.values())
