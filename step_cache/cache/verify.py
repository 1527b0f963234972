"""``step-cache verify``: check every shard of a cache against its manifest, byte for byte and value for value."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from step_cache.cache.files import file_sha256
from step_cache.cache.identity import qualified_groups, qualify
from step_cache.cache.integrity import remember
from step_cache.cache.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ShardRecord,
    read_manifest,
    settings_hash,
)
from step_cache.cache.projection import check_projection
from step_cache.cache.quantize import SCALE_DTYPE
from step_cache.cache.sealing import SEAL_KEY, seal_problem
from step_cache.cache.shard_file import (
    CROP_METADATA,
    METADATA,
    STRING,
    VIEW_METADATA,
    ShardError,
    classes_problem,
    read_shard_metadata,
)
from step_cache.cache.shards import shard_root

# videos that may have augmented views (step_cache.extraction.views.VIEW_SPLITS): training, or no split
_VIEW_SPLITS = ("train", "")
_TEST_VIEW_SPLITS = ("val", "test")  # videos with test views (step_cache.extraction.test_views.TEST_VIEW_SPLITS)
_READ_BLOCK_BYTES = 256 * 2**20  # read tokens in blocks of about this size: bounded memory, few calls


@dataclass
class VerifyReport:
    directory: Path
    shards: int = 0
    clips: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # each names the file and what is wrong
    warnings: list[str] = field(default_factory=list)  # leftovers that do not make the cache wrong

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (
            f"{self.directory}: {self.shards} shard(s), {self.clips} clips, {self.bytes / 2**20:.1f} MiB "
            f"checked in {self.seconds:.1f} s"
        )
        lines = [f"OK  {head}" if self.ok else f"BAD {head}: {len(self.problems)} problem(s)"]
        lines += [f"  problem: {p}" for p in self.problems] + [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def verify_cache(directory: str | Path, checksums: bool = True, progress: bool = False) -> VerifyReport:
    """Check counts, shapes, dtypes, checksums, that every chunk reads, label ranges, finite values, and that no
    video appears twice. Never raises for a damaged cache: every finding goes into the report."""
    directory = Path(directory)
    report = VerifyReport(directory)
    started = time.perf_counter()
    try:
        manifest = read_manifest(directory, check_seal=False)  # an edited manifest is reported, then checked on
    except ManifestError as error:
        report.problems.append(str(error))
        return report
    stored = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    if problem := seal_problem(stored, str(directory / MANIFEST_NAME)):
        report.problems.append(problem)
    elif SEAL_KEY not in stored:
        report.warnings.append(
            f"{directory / MANIFEST_NAME}: no manifest_sha256 (written by an older step-cache), so edits to it "
            "cannot be detected"
        )
    report.warnings += [  # cached, but its decoder reported damaged data: its frames may be wrong
        f"{directory / MANIFEST_NAME}: {w.reason}" for w in manifest.warnings if w.decode_errors
    ]
    try:
        prefixes = _identity_prefixes(directory, manifest)
    except ShardError as error:
        report.problems.append(str(error))
        prefixes = {}
    if (projection := manifest.extraction["tokens"].get("projection")) and (
        problem := check_projection(directory, projection)
    ):
        report.problems.append(problem)
    seen_videos: dict[str, str] = {}  # "video#clipK#viewV" -> the shard that holds it
    splits: dict[str, str] = {}  # video -> its split
    for record in tqdm(manifest.shards, desc="verify", unit="shard", disable=not progress):
        report.shards += 1
        problems = _check_shard(
            directory / record.file, record, manifest, checksums, seen_videos, splits, prefixes.get(record.file, "")
        )
        report.problems += [f"{directory / record.file}: {p}" for p in problems]
        report.clips += record.clips
        report.bytes += record.bytes
    if stored.get("num_clips") != manifest.num_clips or stored.get("num_videos") != manifest.num_videos:
        report.problems.append(
            f"{directory / MANIFEST_NAME}: num_clips/num_videos ({stored.get('num_clips')}/{stored.get('num_videos')})"
            f" do not match its shard list ({manifest.num_clips}/{manifest.num_videos})"
        )
    report.problems += _check_views(seen_videos, splits, manifest.view_count)
    clips_per_video = Counter({key.rsplit("#clip", 1)[0]: 0 for key in seen_videos})  # clean clips per video
    clips_per_video.update(key.rsplit("#clip", 1)[0] for key in seen_videos if key.endswith("#view0"))
    test_views = manifest.extraction.get(
        "test_views"
    )  # val/test videos hold segments x crops clean rows instead of K clips

    def expected_clips(video: str) -> int:
        tested = test_views and splits.get(video, "") in _TEST_VIEW_SPLITS
        return test_views["segments"] * test_views["crops"] if tested else manifest.clips_per_video

    partial = [video for video, count in clips_per_video.items() if count != expected_clips(video)]
    if partial:
        report.problems.append(
            f"{len(partial)} video(s) with other than {expected_clips(partial[0])} clip(s), e.g. {partial[0]} "
            f"({clips_per_video[partial[0]]})"
        )
    listed = {(directory / r.file).resolve() for r in manifest.shards}
    for path in sorted(directory.rglob("shard-*.h5")):
        if path.resolve() not in listed:
            report.warnings.append(f"{path}: shard on disk but not in the manifest (a run that did not finish?)")
    for path in sorted(directory.rglob(".shard-*.h5.tmp")):
        report.warnings.append(f"{path}: unfinished shard of an interrupted run; the next extract removes it")
    report.seconds = time.perf_counter() - started
    return report


def _identity_prefixes(directory: Path, manifest: Manifest) -> dict[str, str]:
    """In a cache merged from several video roots: ``ROOT/`` for each shard whose keys readers qualify with their
    root (``step_cache.cache.identity``), so that same-named videos of two roots are not duplicates. {} otherwise."""
    if not any(record.root is not None for record in manifest.shards):
        return {}
    groups: dict[str | None, list[str]] = {}
    for record in manifest.shards:
        keys = groups.setdefault(shard_root(manifest, record), [])
        with contextlib.suppress(OSError, KeyError, ValueError):  # an unreadable shard is reported below
            keys += read_shard_metadata(directory / record.file)["video"].tolist()
    roots = list(groups)
    qualified = qualified_groups(list(groups.values()), roots, [f"{directory} (its part from {r})" for r in roots])
    return {
        record.file: qualify("", shard_root(manifest, record))
        for record in manifest.shards
        if roots.index(shard_root(manifest, record)) in qualified
    }


def _check_views(seen_videos: dict[str, str], splits: dict[str, str], count: int) -> list[str]:
    """Every clip of a training video has views 1..count besides its clean one (view 0); val/test videos have none.
    A clip without a clean view is counted by the clips-per-video check."""
    views: dict[str, set[int]] = {}
    for key in seen_videos:
        clip, view = key.rsplit("#view", 1)
        views.setdefault(clip, set()).add(int(view))
    problems, wrong, outside = [], [], []
    for clip, found in views.items():
        video = clip.rsplit("#clip", 1)[0]
        expected = set(range(count + 1)) if splits.get(video, "") in _VIEW_SPLITS else {0}
        if found - {0} and expected == {0}:
            outside.append(f"{video} ({splits[video]})")
        elif found - {0} != expected - {0}:
            wrong.append(f"{clip.replace('#clip', ' clip ')} (views {sorted(found - {0})})")
    if outside:
        problems.append(f"{len(outside)} video(s) outside the training split with augmented views, e.g. {outside[0]}")
    if wrong:
        problems.append(f"{len(wrong)} training clip(s) without exactly views 1..{count}, e.g. {wrong[0]}")
    return problems


def _check_shard(
    path: Path,
    record: ShardRecord,
    manifest: Manifest,
    checksums: bool,
    seen_videos: dict[str, str],
    splits: dict[str, str],
    prefix: str = "",
) -> list[str]:
    if not path.is_file():
        return ["missing"]
    problems = []
    size = path.stat().st_size
    if size != record.bytes:
        problems.append(f"size {size} bytes, manifest says {record.bytes} (truncated or altered)")
    elif checksums and file_sha256(path) != record.sha256:
        problems.append("sha256 differs from the manifest (altered)")
    try:
        with h5py.File(path, "r") as handle:
            problems += _check_contents(handle, record, manifest, seen_videos, splits, record.file, prefix)
    except (OSError, KeyError, ValueError) as error:
        problems.append(f"unreadable ({' '.join(str(error).split())[:200]})")
    if checksums and not problems:
        remember([(path, record.sha256)])  # train-probe & co. then trust it without another checksum
    return problems


def _cls_copies(
    handle: h5py.File, manifest: Manifest, expected: tuple[int, ...], problems: list[str]
) -> list[tuple[str, str]]:
    """(copy, source) dataset pairs to compare when the manifest records a CLS copy; a missing or misshapen copy is
    a problem."""
    if not manifest.storage.get("cls_copy"):
        return []
    cls = manifest.layout.cls_tokens
    pairs = [("cls", "tokens", (*expected[:-2], cls, expected[-1]))]
    if manifest.layout.quantized:
        pairs.append(("cls_scales", "token_scales", (*expected[:-2], cls)))
    for copy, _source, shape in pairs:
        if copy not in handle or handle[copy].shape != shape:
            found = "missing" if copy not in handle else f"of shape {handle[copy].shape}"
            problems.append(f"{copy} (the CLS copy the manifest records) {found}, expected shape {shape}")
            return []
    return [(copy, source) for copy, source, _shape in pairs]


def _check_contents(
    handle: h5py.File,
    record: ShardRecord,
    manifest: Manifest,
    seen_videos: dict[str, str],
    splits: dict[str, str],
    name: str,
    prefix: str = "",
) -> list[str]:
    if not handle.attrs.get("complete", False):
        return ["not marked complete"]
    settings = handle.attrs.get("settings_sha256", "")
    if (settings.decode() if isinstance(settings, bytes) else str(settings)) != settings_hash(manifest.extraction):
        return ["written with other extraction settings than the manifest's (a shard of another cache?)"]
    if problem := classes_problem(handle.attrs, manifest.classes):
        return [problem]
    crop = CROP_METADATA if manifest.extraction.get("test_views") else {}
    fields = (*METADATA, *(VIEW_METADATA if manifest.view_count else ()), *crop)
    missing = [key for key in ("tokens", *fields) if key not in handle]
    if missing:
        return [f"lacks dataset(s) {', '.join(missing)}"]
    layout = manifest.layout
    layer_axis = () if layout.layers is None else (len(layout.layers),)  # version 5: (N, L, T, P, D)
    expected = (record.clips, *layer_axis, manifest.frames, layout.tokens_per_frame, layout.dim)
    tokens = handle["tokens"]
    problems = []
    if tokens.shape != expected:
        return [f"tokens have shape {tokens.shape}, expected {expected}"]
    if tokens.dtype != np.dtype(layout.dtype):
        problems.append(f"tokens are {tokens.dtype}, manifest says {layout.dtype}")
    if layout.quantized:  # int8: the scales must be there, one per token
        scales = handle.get("token_scales")
        if scales is None or scales.shape != expected[:-1] or scales.dtype != SCALE_DTYPE:
            found = "missing" if scales is None else f"{scales.dtype} {scales.shape}"
            problems.append(f"token_scales {found}, expected {np.dtype(SCALE_DTYPE)} {expected[:-1]}")
    copies = _cls_copies(handle, manifest, expected, problems)
    for key in fields:
        if len(handle[key]) != record.clips:
            problems.append(f"{key} has {len(handle[key])} rows, expected {record.clips}")
    if problems:
        return problems
    labels = handle["labels"][...]
    if labels.min(initial=0) < -1 or labels.max(initial=-1) >= len(manifest.classes):
        problems.append(f"labels outside -1..{len(manifest.classes) - 1}")
    if handle["frame_indices"].shape != (record.clips, manifest.frames):
        problems.append(f"frame_indices have shape {handle['frame_indices'].shape}")
    videos = handle["video"].asstr()[...] if handle["video"].dtype == STRING else handle["video"][...]
    views = handle["view"][...] if "view" in handle else np.zeros(record.clips, np.int32)
    crops = handle["crop"][...] if "crop" in handle else np.zeros(record.clips, np.int32)
    split_names = handle["split"].asstr()[...]
    rows = zip(videos, handle["clip"][...], views, crops, split_names, strict=True)
    for key_in_root, clip, view, crop, split in rows:
        video = f"{prefix}{key_in_root}"  # its identity: qualified by its root where readers qualify it
        # a test-view crop is a clip of its own (crop 0 keeps the key of a cache without test views)
        key = f"{video}#clip{clip}{f'#crop{crop}' if crop else ''}#view{view}"
        if key in seen_videos:
            where = f"{f' crop {crop}' if crop else ''}{f' view {view}' if view else ''}"
            problems.append(f"{video} clip {clip}{where} also in {seen_videos[key]} (duplicate)")
        seen_videos[key] = name
        splits[str(video)] = str(split)
    block = max(1, _READ_BLOCK_BYTES // (int(np.prod(expected[1:])) * tokens.dtype.itemsize))
    bad_clips = []
    for start in range(0, record.clips, block):
        try:
            # int8 values are always finite: a NaN/Inf token of an int8 cache has a non-finite scale
            values = (
                handle["token_scales"][start : start + block] if layout.quantized else tokens[start : start + block]
            )
        except OSError as error:  # a damaged chunk: name the clips it holds
            problems.append(f"clips {start}..{min(record.clips, start + block) - 1} unreadable ({error})")
            continue
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        bad_clips += [start + int(i) for i in np.nonzero(~finite)[0]]
        for copy, source in copies:  # the CLS copy must hold exactly the stored CLS tokens
            rows = np.s_[start : start + block]
            stored = handle[source][rows]
            stored = stored[..., : layout.cls_tokens, :] if source == "tokens" else stored[..., : layout.cls_tokens]
            copied = handle[copy][rows]
            same = (copied == stored) | (np.isnan(copied) & np.isnan(stored) if stored.dtype.kind == "f" else False)
            if differing := (start + np.nonzero(~same.reshape(len(same), -1).all(axis=1))[0]).tolist():
                more = ", ..." if len(differing) > 5 else ""  # name the rows, as NaN/Inf clips are named
                problems.append(
                    f"{copy} differs from the CLS tokens in {source} in {len(differing)} clip(s): rows "
                    f"{', '.join(map(str, differing[:5]))}{more}"
                )
    if bad_clips:
        problems.append(f"NaN/Inf in {len(bad_clips)} clip(s), e.g. row {bad_clips[0]} ({videos[bad_clips[0]]})")
    return problems
