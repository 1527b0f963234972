"""Before a long extraction: how many bytes the cache will take (``extract --dry-run``), how long a stage-two epoch
will read them on the target disk, and the refusal to start an extraction the target has no room for.

The size is counted, not guessed: clips (videos x clips, plus the augmented views of training videos) times the
bytes of one clip's tokens as stored (``TokenLayout.clip_bytes``, plus ``cls_bytes`` for the CLS copy), plus what
HDF5 adds per clip (metadata, chunk index) and per shard file (superblock, object headers), measured on caches of
1-40 shards (docs/performance.md).
The read rate comes from a short read test on the target's file system: a file written, flushed, dropped from the
page cache (``posix_fadvise``) and read back once, so it is the disk's rate, not RAM's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from step_cache.cache.disk_space import free_bytes
from step_cache.cache.manifest import Manifest, ManifestError, TokenLayout, read_manifest
from step_cache.cache.shard_file import CLS_CHUNK_CLIPS

SHARD_OVERHEAD = 28 << 10  # bytes HDF5 adds per shard file (measured: 25-31 KiB)
CLIP_OVERHEAD = 256  # bytes per clip besides its tokens and frame indices (metadata, chunk index; measured 60-260)
MARGIN_SHARE, MARGIN_LEAST = 0.05, 16 << 20  # room kept beyond the estimate: 5 % and 16 MiB
READ_TEST_BYTES = 64 << 20


@dataclass
class SizeEstimate:
    """What an extraction into ``out`` will write, and whether the target has room for it."""

    out: Path
    videos: int
    clips: int  # rows of the finished cache: clips of every video, and the augmented views of training videos
    clip_bytes: int  # one clip's tokens as stored (int8: values and scales), its CLS copy included
    shards: int
    total_bytes: int  # the whole cache
    existing_bytes: int  # the shards already in ``out`` (a resumed extraction); they are part of the total
    free_bytes: int
    read_rate: float | None = None  # bytes/s of the short read test on the target's disk (None: not run)

    @property
    def needed_bytes(self) -> int:
        return max(0, self.total_bytes - self.existing_bytes)

    @property
    def margin_bytes(self) -> int:
        return MARGIN_LEAST + int(MARGIN_SHARE * self.needed_bytes)

    @property
    def fits(self) -> bool:
        return self.free_bytes >= self.needed_bytes + self.margin_bytes

    @property
    def epoch_read_seconds(self) -> float | None:
        """Seconds to read every clip once at the measured rate (a stage-two epoch over the whole cache)."""
        return None if not self.read_rate else self.total_bytes / self.read_rate

    def refusal(self) -> str:
        """The one line ``extract`` stops with when the target has no room."""
        return (
            f"{self.out}: not enough free space: the cache needs about {_size(self.needed_bytes)} more "
            f"({self.clips} clips x {_size(self.clip_bytes)}, {_size(self.total_bytes)} in all) plus a margin of "
            f"{_size(self.margin_bytes)}, and {_size(self.free_bytes)} are free; free some space, extract somewhere "
            "else, or pass --force (force=True) to extract what fits"
        )

    def summary(self) -> str:
        rows = [
            ("videos", f"{self.videos}"),
            ("clips", f"{self.clips}"),
            ("bytes per clip", f"{_size(self.clip_bytes)} ({self.clip_bytes} bytes of tokens, CLS copy included)"),
            ("cache size", f"{_size(self.total_bytes)} in {self.shards} shard(s)"),
        ]
        if self.existing_bytes:
            rows.append(
                ("already written", f"{_size(self.existing_bytes)} (resumed: {_size(self.needed_bytes)} to go)")
            )
        verdict = "enough" if self.fits else "NOT enough: extract refuses without --force"
        rows.append(("free on target", f"{_size(self.free_bytes)} ({verdict}; margin {_size(self.margin_bytes)})"))
        if self.read_rate:
            rows.append(("disk read rate", f"{self.read_rate / 1e6:.0f} MB/s (short read test, page cache dropped)"))
            rows.append(("stage-two epoch", f"about {_duration(self.epoch_read_seconds or 0)} to read every clip once"))
        width = max(len(name) for name, _ in rows)
        return "\n".join([f"extract --dry-run: {self.out}"] + [f"  {n:<{width}}  {v}" for n, v in rows])


def estimate_size(
    out: str | Path,
    layout: TokenLayout,
    frames: int,
    per_video: Sequence[int],
    shard_size_mb: float = 1024.0,
    clips_per_video: int = 1,
) -> SizeEstimate:
    """The size of a cache of videos with ``per_video`` shard rows each (clips, views, test views:
    ``pipeline.video_row_count``), in catalogue order, without reading any video; ``clips_per_video``: extract's
    ``clips`` (K), which bounds a shard's clips from below as in the pipeline."""
    out = Path(out)
    clips = sum(per_video)
    clip_bytes = layout.clip_bytes(frames)
    shard_clips = max(clips_per_video, int(shard_size_mb * 2**20 // clip_bytes))  # as the pipeline rolls over
    sizes: list[int] = []  # clips per shard: a shard is published after the video that fills it (cache.writer)
    for count in per_video:
        if not sizes or sizes[-1] >= shard_clips:
            sizes.append(0)
        sizes[-1] += count
    manifest = _manifest(out)
    # the CLS copy (format 5): every new cache with CLS tokens; a resumed cache keeps its choice (cache.writer). Its
    # chunks hold CLS_CHUNK_CLIPS clips, and HDF5 allocates a shard's last chunk whole.
    copy = bool(manifest.storage.get("cls_copy")) if manifest and manifest.shards else layout.cls_tokens > 0
    copy_clips = sum(-(-size // CLS_CHUNK_CLIPS) * CLS_CHUNK_CLIPS for size in sizes) if copy else 0
    clip_bytes += layout.cls_bytes(frames) if copy else 0
    per_clip = layout.clip_bytes(frames) + CLIP_OVERHEAD + 8 * frames  # int64 frame indices
    total = clips * per_clip + copy_clips * layout.cls_bytes(frames) + len(sizes) * SHARD_OVERHEAD
    existing = sum(record.bytes for record in manifest.shards) if manifest else 0
    return SizeEstimate(out, len(per_video), clips, clip_bytes, len(sizes), total, existing, free_bytes(out))


def _manifest(out: Path) -> Manifest | None:
    try:
        return read_manifest(out)
    except (ManifestError, OSError):
        return None  # no cache there yet (or one that extract itself will judge)


def read_rate(directory: str | Path, size: int = READ_TEST_BYTES) -> float | None:
    """Bytes per second of one read of a fresh ``size``-byte file in ``directory`` (the nearest existing parent),
    its pages dropped from the page cache first; None where there is no room for the file or it cannot be
    written."""
    directory = Path(directory)
    while not directory.is_dir() and directory != directory.parent:
        directory = directory.parent
    if free_bytes(directory) < 4 * size:
        return None
    path = directory / f".step-cache-read-test-{os.getpid()}"
    try:
        block = os.urandom(1 << 20)
        with open(path, "wb") as handle:
            for _ in range(max(1, size >> 20)):
                handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        started, total = time.perf_counter(), 0
        with open(path, "rb", buffering=0) as handle:
            while chunk := handle.read(8 << 20):
                total += len(chunk)
        return total / max(time.perf_counter() - started, 1e-9)
    except OSError:
        return None
    finally:
        path.unlink(missing_ok=True)


def _size(size: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size / 2**10:.1f} KiB"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
