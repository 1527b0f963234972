"""The cache directory on disk while extraction writes it: settings check, crash recovery, shard roll-over.

Opening an output directory either starts a new manifest or resumes the existing one (refusing other settings),
removes half-written shards of a killed run, adopts a shard published just before a crash, and tells which items
are done. ``CacheWriter`` then appends clips, publishes full shards and rewrites the manifest after each.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path

from step_cache import __version__
from step_cache.cache.disk_space import DiskFullError, disk_full_message, free_bytes, is_disk_full
from step_cache.cache.files import file_sha256
from step_cache.cache.integrity import CHECKED_NAME, remember
from step_cache.cache.manifest import (
    MANIFEST_NAME,
    Failure,
    Manifest,
    ManifestError,
    ShardRecord,
    TokenLayout,
    extraction_differences,
    read_manifest,
    settings_hash,
    write_manifest,
)
from step_cache.cache.shard_file import (
    ClipRecord,
    ShardError,
    ShardWriter,
    read_shard_metadata,
    read_shard_settings,
    shard_classes_problem,
    shard_name,
)
from step_cache.errors import StepCacheError
from step_cache.interface import option, switch

log = logging.getLogger(__name__)
_SHARD_FILE = re.compile(r"^shard-(?P<index>\d+)\.h5$")


class ExtractionError(StepCacheError, RuntimeError):
    """Extraction cannot start or was stopped (settings mismatch, --strict failure, write error)."""


def open_output(
    out: Path, extraction: dict, classes: list[str], pairs: list, source: dict, overwrite: bool
) -> Manifest:
    manifest_path = out / MANIFEST_NAME
    for marker, kind in (("config.json", "a training run"), ("trials.json", "a sweep")):
        if not manifest_path.exists() and (out / marker).is_file():  # --overwrite deletes a cache, never these
            raise ExtractionError(
                f"{out}: holds {kind} ({marker}); a cache needs a directory of its own: choose another {option('out')}"
            )
    if overwrite and out.is_dir():
        remove_cache(out)
    if not manifest_path.exists():
        manifest = Manifest(
            extraction=extraction, classes=classes, pairs=pairs, source=source, tool_version=__version__
        )
        write_manifest(out, manifest)
        return manifest
    manifest = read_manifest(out)
    if refusal := resume_refusal(out, manifest, extraction, classes, source):
        raise ExtractionError(refusal)
    manifest.pairs = pairs or manifest.pairs
    manifest.source = source
    return manifest


def resume_refusal(out: Path, manifest: Manifest, extraction: dict, classes: list[str], source: dict) -> str | None:
    """Why the cache in ``out`` cannot take this run's items (None when it can): other extraction settings or
    classes, or another videos root. Keys are paths relative to the videos root, so the same names under another
    root are other videos; comparing the roots recorded in ``source.videos`` keeps them apart (only when both runs
    record one). Used by the resume and by the finished-cache shortcut alike."""
    differences = extraction_differences(manifest.extraction, extraction)
    if manifest.classes != classes:
        differences.append(f"classes: {manifest.classes} != {classes}")
    if differences:
        return (
            f"{out} holds a cache made with other settings ({'; '.join(differences[:4])}); "
            f"use another {option('out')}, or {switch('overwrite')} to start over"
        )
    cached, given = manifest.source.get("videos"), source.get("videos")
    if cached and given and cached != given:
        return (
            f"{out} holds videos extracted from {cached}, not from {given}: the same file names there may be other "
            f"videos; use another {option('out')}, or {switch('overwrite')} to start over"
        )
    return None


def finished_keys(out: Path, manifest: Manifest) -> set[str]:
    """Item keys of the clips in the manifest's shards. ExtractionError when a listed shard is missing, ShardError
    when one cannot be read."""
    done: set[str] = set()
    for record in manifest.shards:
        path = out / record.file
        if not path.is_file():
            raise ExtractionError(
                f"{path}: listed in the manifest but missing; run step-cache verify, or {switch('overwrite')}"
            )
        done.update(read_shard_metadata(path, manifest.classes)["video"].tolist())
    return done


def remove_cache(out: Path) -> None:
    """Delete a cache: first the manifest's list of shards (an atomic rewrite), then the shards, the manifest last.
    A removal killed at any point thus leaves a valid cache: one listing no shard, beside unlisted shard files that
    ``verify`` reports and the next run adopts (same settings) or refuses (others), rather than a manifest listing
    shards that are gone."""
    shards = [p for p in out.iterdir() if _SHARD_FILE.match(p.name) or p.name.endswith(".h5.tmp")]
    if shards and (out / MANIFEST_NAME).is_file():
        with contextlib.suppress(ManifestError):  # an unreadable manifest lists nothing to keep consistent
            manifest = read_manifest(out)
            manifest.shards, manifest.failures, manifest.warnings, manifest.durations = [], [], [], {}
            write_manifest(out, manifest)
    for path in shards:
        path.unlink()
    (out / CHECKED_NAME).unlink(missing_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    if shards:
        log.info("%s: removed the previous cache (--overwrite)", out)


def recover(out: Path, manifest: Manifest) -> set[str]:
    """Discard half-written shards, adopt complete ones the manifest missed, and return the finished items."""
    for tmp in out.glob(".shard-*.h5.tmp"):
        log.warning("%s: discarding an unfinished shard from an interrupted run", tmp)
        tmp.unlink()
    listed = {record.file for record in manifest.shards}
    for path in sorted(out.glob("shard-*.h5")):
        if path.name in listed:
            continue
        # Published but not yet in the manifest (a crash between rename and manifest write): keep its work, if it
        # belongs to this cache; a shard of other settings is not ours to adopt or to delete.
        try:
            meta = read_shard_metadata(path)
        except ShardError as error:
            log.warning("%s; removing it", error)
            path.unlink()
            continue
        foreign = read_shard_settings(path) != settings_hash(manifest.extraction)
        if foreign or shard_classes_problem(path, manifest.classes):
            raise ExtractionError(
                f"{path}: a shard made with other extraction settings or classes, not listed in the manifest; move "
                f"it away, or use {switch('overwrite')} to start the cache over"
            )
        sha = file_sha256(path)
        videos = len(set(meta["video"]))
        manifest.shards.append(ShardRecord(path.name, len(meta["labels"]), videos, path.stat().st_size, sha))
        remember([(path, sha)])
        log.warning("%s: adopted a complete shard missing from the manifest", path)
    done = finished_keys(out, manifest)
    write_manifest(out, manifest)
    return done


def storage_record(manifest: Manifest, compression: str) -> dict:
    """The manifest's ``storage`` for a run writing into it (after ``recover``): this run's compression, and
    ``cls_copy`` (each shard stores its CLS tokens once more) for a new cache whose tokens have CLS tokens. A cache
    that already holds shards keeps its choice, so every shard of a cache agrees."""
    cls_copy = manifest.storage.get("cls_copy", False) if manifest.shards else manifest.layout.cls_tokens > 0
    return {"compression": compression, **({"cls_copy": True} if cls_copy else {})}


def merged_storage(manifests: list[Manifest]) -> dict:
    """``storage`` of a merge: the first part's, with the CLS copy only when every part has it (a reader then
    slices the tokens of every shard, which is right for all of them)."""
    storage = dict(manifests[0].storage)
    storage.pop("cls_copy", None)
    return {**storage, **({"cls_copy": True} if all(m.storage.get("cls_copy") for m in manifests) else {})}


def next_shard_index(manifest: Manifest) -> int:
    indices = [int(m["index"]) for r in manifest.shards if (m := _SHARD_FILE.match(r.file))]
    return max(indices, default=-1) + 1


class CacheWriter:
    """The shard being written, rolled over when full; the manifest is rewritten after every published shard.

    Each shard reserves its bytes on disk when it opens (``disk_space``): as many clips as a shard holds, or as
    this run still has to write (``expected_clips``), or as fit in the free space (minus ``SLACK`` kept for the
    manifest), in which case the shard is published early and the next one finds the disk full."""

    SLACK = 1 << 20  # bytes left free beside a reservation: the manifest and its temporary copy
    OVERHEAD = 1 << 18  # a shard file's own structures, beside its clips

    def __init__(
        self,
        out: Path,
        manifest: Manifest,
        layout: TokenLayout,
        frames: int,
        next_index: int,
        shard_clips: int,
        compression: str,
        expected_clips: int | None = None,
        video_clips: int = 1,
    ):
        self.out, self.manifest, self.layout, self.frames = out, manifest, layout, frames
        self.next_index, self.shard_clips, self.compression = next_index, shard_clips, compression
        self.writer: ShardWriter | None = None
        self.capacity = shard_clips  # clips the open shard has room for
        self.remaining = expected_clips  # clips this run still has to write (None: unknown)
        self.video_clips = video_clips  # the most clips one video adds
        self.written = 0  # bytes of the shards published by this run
        # per clip: its tokens, its CLS copy and its metadata (video key, frame indices, ...)
        self.cls_copy = bool(manifest.storage.get("cls_copy", False))
        self.clip_bytes = layout.clip_bytes(frames) + self.cls_copy * layout.cls_bytes(frames) + 512 + 16 * frames

    def needed_bytes(self) -> int | None:
        """About how many more bytes this run's remaining clips take (None: unknown)."""
        return None if self.remaining is None else self.remaining * self.clip_bytes

    def append_video(self, records: list[ClipRecord]) -> None:
        """All clips of one video, in one shard, published together or not at all."""
        if self.writer is None:
            self._open(len(records))
        self.writer.append_video(records)
        if self.remaining is not None:
            self.remaining = max(0, self.remaining - len(records))

    def _open(self, first: int) -> None:
        want = self.shard_clips + self.video_clips  # a shard rolls over after the video that fills it
        if self.remaining is not None:
            want = min(want, max(self.remaining, first))
        fits = (free_bytes(self.out) - self.SLACK - self.OVERHEAD) // self.clip_bytes
        if fits < first:
            raise DiskFullError(self.out)
        self.capacity = min(want, fits)
        self.writer = ShardWriter(
            self.out, shard_name(self.next_index), self.layout, self.frames, self.compression,
            settings=settings_hash(self.manifest.extraction), views=self.manifest.view_count > 0,
            reserve_bytes=self.capacity * self.clip_bytes + self.OVERHEAD, classes=self.manifest.classes,
            cls_copy=self.cls_copy,
            test_views=self.manifest.extraction.get("test_views") is not None,
        )  # fmt: skip
        self.next_index += 1

    def roll_over_if_full(self, failures: dict[str, Failure]) -> None:
        """Publish the shard when it holds ``shard_clips`` clips, or when its reservation has no room for another
        video (a disk with less free space than a whole shard gets its clips in smaller shards)."""
        if self.writer is None:
            return
        # room for the largest video, unless what the run has left fits (test views make val/test videos larger than
        # training ones: a last training video must not get a shard of its own)
        short_of_room = self.writer.count + self.video_clips > self.capacity and not (
            self.remaining is not None and self.writer.count + self.remaining <= self.capacity
        )
        if self.writer.count >= self.shard_clips or short_of_room:
            self._publish(failures)

    def _publish(self, failures: dict[str, Failure]) -> None:
        writer, self.writer = self.writer, None
        if writer is not None and writer.committed:  # an interrupt inside the first video leaves nothing to list
            record = writer.finish()
            self.written += record.bytes
            self.manifest.shards.append(record)
        elif writer is not None:
            writer.abandon()
        self._save(failures)

    def _save(self, failures: dict[str, Failure]) -> None:
        self.manifest.failures = sorted(failures.values(), key=lambda f: f.video)
        write_manifest(self.out, self.manifest)

    def finish(self, failures: dict[str, Failure]) -> None:
        self._publish(failures)

    def abandon(self, failures: dict[str, Failure]) -> None:
        if self.writer is not None:
            self.writer.abandon()
            self.writer = None
        try:
            self._save(failures)
        except OSError as error:  # e.g. the disk is still full: the previous manifest stays valid
            log.error("%s: could not update the manifest (%s)", self.out, error)

    def stop_on_full_disk(self, failures: dict[str, Failure], what: str = "extraction") -> str:
        """After the disk filled: publish the whole videos of the open shard (its bytes are reserved, so this
        needs no new space; a shard renamed before its manifest entry could be written is adopted by the next
        run) and return the one-line message."""
        try:
            self.finish(failures)
        except OSError as error:
            if not is_disk_full(error):
                raise
            if self.writer is not None:
                self.writer.abandon()
                self.writer = None
        return disk_full_message(self.out, what, self.written, self.needed_bytes())
