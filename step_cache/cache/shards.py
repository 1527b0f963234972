"""HDF5 token shards: the writer (crash-safe) and the reader (``open_shards``).

A shard ``shard-XXXXX.h5`` holds N clips; see ``docs/shard-format.md`` for every dataset and attribute. It is
written as ``.shard-XXXXX.h5.tmp`` and renamed only once complete and flushed, so a shard that exists under its
final name is whole; the manifest then lists it with its checksum.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from step_cache.cache.manifest import (
    FORMAT_VERSION,
    Manifest,
    ManifestError,
    ShardRecord,
    TokenLayout,
    extraction_differences,
    file_sha256,
    fsync_dir,
    read_manifest,
)

STRING = h5py.string_dtype("utf-8")
# Per-clip metadata datasets (besides ``tokens``), with their dtypes; a missing one makes a shard unreadable.
METADATA = {
    "labels": np.int64,  # index into manifest classes, -1 when unlabelled
    "video": STRING,  # item key: relative path, plus "#start-end" for segments
    "clip": np.int32,  # temporal clip index within the video (0..K-1)
    "split": STRING,  # "train" | "val" | "test" | ""
    "frame_indices": np.int64,  # (N, T) sampled frame numbers in the video
    "num_frames": np.int64,  # frame count of the video (or segment)
    "short": np.bool_,  # True when the video had fewer than T frames and frames were repeated
}


class ShardError(ValueError):
    """A shard file that is missing, incomplete, or does not match its manifest."""


COMPRESSIONS = ("none", "lz4", "zstd", "gzip")


def compression_filter(name: str) -> dict:
    """h5py dataset options for a compression choice (see docs/performance.md for why "none" is the default)."""
    if name == "none":
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if name in ("lz4", "zstd"):
        hdf5plugin = load_compression_plugins(name)
        return dict(hdf5plugin.Blosc(cname=name, clevel=5 if name == "lz4" else 3, shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise ShardError(f"unknown compression {name!r}; choose one of {', '.join(COMPRESSIONS)}")


def load_compression_plugins(name: str):
    """Blosc shards need hdf5plugin's filters registered with HDF5 before any read or write."""
    try:
        import hdf5plugin
    except ImportError:
        raise ShardError(
            f"shards compressed with {name} need the hdf5plugin package: pip install 'step-cache[compression]'"
        ) from None
    return hdf5plugin


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


@dataclass
class ClipRecord:
    """One clip to append to a shard."""

    tokens: np.ndarray  # (T, P, D)
    label: int
    video: str
    clip: int
    split: str
    frame_indices: np.ndarray  # (T,)
    num_frames: int
    short: bool


class ShardWriter:
    """Appends clips to a temporary HDF5 file and publishes it atomically with ``finish()``."""

    def __init__(
        self,
        directory: str | Path,
        name: str,
        layout: TokenLayout,
        frames: int,
        compression: str = "none",
        settings: str = "",
    ):
        self.directory = Path(directory)
        self.name = name
        self.final_path = self.directory / name
        self.tmp_path = self.directory / f".{name}.tmp"
        self.count = 0
        self.videos: set[str] = set()
        self._file = h5py.File(self.tmp_path, "w")
        tokens_shape = (frames, layout.tokens_per_frame, layout.dim)
        # One chunk per clip: a random clip read touches exactly one chunk.
        self._file.create_dataset(
            "tokens",
            shape=(0, *tokens_shape),
            maxshape=(None, *tokens_shape),
            chunks=(1, *tokens_shape),
            dtype=np.dtype(layout.dtype),
            **compression_filter(compression),
        )
        self._frames = frames
        # Metadata is small: keep it in memory and write each dataset once, in finish().
        self._metadata: dict[str, list] = {key: [] for key in METADATA}
        self._file.attrs["format_version"] = FORMAT_VERSION
        self._file.attrs["complete"] = False
        self._file.attrs["settings_sha256"] = settings  # the cache's extraction settings (manifest.settings_hash)
        self._committed = 0  # clips up to the last whole video

    @property
    def committed(self) -> int:
        """Clips of whole videos written so far: what ``finish`` would publish."""
        return self._committed

    def append(self, record: ClipRecord) -> None:
        """Append one clip (a whole video when the cache has one clip per video)."""
        self.append_video([record])

    def append_video(self, records: list[ClipRecord]) -> None:
        """Append all clips of one video. ``finish`` publishes whole videos only: if an interrupt lands between
        two clips of a video, that video's clips are dropped and it is extracted again on resume."""
        for record in records:
            self._append_clip(record)
        self._committed = self.count

    def _append_clip(self, record: ClipRecord) -> None:
        tokens = self._file["tokens"]
        if self.count == len(tokens):  # grow geometrically: resizing per clip costs more than the write
            tokens.resize(max(8, 2 * len(tokens)), axis=0)
        tokens[self.count] = record.tokens
        for key, value in (
            ("labels", record.label),
            ("video", record.video),
            ("clip", record.clip),
            ("split", record.split),
            ("frame_indices", record.frame_indices),
            ("num_frames", record.num_frames),
            ("short", record.short),
        ):
            self._metadata[key].append(value)
        self.count += 1
        self.videos.add(record.video)

    def finish(self) -> ShardRecord:
        """Mark complete, flush to disk, rename to the final name; returns the manifest entry."""
        self.count = self._committed
        self._metadata = {key: values[: self.count] for key, values in self._metadata.items()}
        self.videos = set(self._metadata["video"])
        self._file["tokens"].resize(self.count, axis=0)
        for key, dtype in METADATA.items():
            shape = (self.count, self._frames) if key == "frame_indices" else (self.count,)
            values = np.asarray(self._metadata[key], dtype=object if dtype is STRING else dtype).reshape(shape)
            self._file.create_dataset(key, data=values, dtype=dtype, maxshape=(None, *shape[1:]), chunks=True)
        self._file.attrs["complete"] = True
        self._file.attrs["num_clips"] = self.count
        self._file.flush()
        self._file.close()
        with open(self.tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.tmp_path, self.final_path)
        fsync_dir(self.directory)
        return ShardRecord(
            file=self.name,
            clips=self.count,
            videos=len(self.videos),
            bytes=self.final_path.stat().st_size,
            sha256=file_sha256(self.final_path),
        )

    def abandon(self) -> None:
        """Drop the unfinished shard (its videos will be extracted again on resume)."""
        with contextlib.suppress(Exception):
            self._file.close()
        self.tmp_path.unlink(missing_ok=True)


def read_shard_settings(path: str | Path) -> str:
    """The extraction-settings hash a shard was written with ('' when unknown)."""
    with h5py.File(path, "r") as handle:
        value = handle.attrs.get("settings_sha256", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def read_shard_metadata(path: str | Path) -> dict[str, np.ndarray]:
    """Per-clip metadata of one complete shard (strings decoded). Raises ShardError for a half-written file."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            if not handle.attrs.get("complete", False):
                raise ShardError(f"{path}: shard is incomplete (its writer did not finish); it is never read")
            missing = [key for key in ("tokens", *METADATA) if key not in handle]
            if missing:
                raise ShardError(f"{path}: shard lacks dataset(s) {', '.join(missing)}")
            return {
                key: handle[key].asstr()[...] if handle[key].dtype == STRING else handle[key][...] for key in METADATA
            }
    except OSError as error:
        raise ShardError(f"{path}: cannot open shard ({error})") from None


class ShardSet:
    """Read access to one or more shard directories with identical extraction settings.

    Metadata of every clip is loaded at open (small); tokens are read on demand. HDF5 files are opened lazily
    and per process, so a ShardSet can be handed to DataLoader workers (each opens its own handles).
    """

    def __init__(self, directories: Sequence[str | Path]):
        if not directories:
            raise ShardError("no shard directory given")
        self.directories = [Path(d) for d in directories]
        self.manifests = [read_manifest(d) for d in self.directories]
        self.manifest = self.manifests[0]
        for manifest in self.manifests:
            if manifest.storage.get("compression", "none") in ("lz4", "zstd"):
                load_compression_plugins(manifest.storage["compression"])
        for directory, manifest in zip(self.directories[1:], self.manifests[1:], strict=True):
            check_compatible(self.manifest, manifest, str(self.directories[0]), str(directory))
        self.paths: list[Path] = []
        parts: list[dict[str, np.ndarray]] = []
        sources: list[int] = []  # which of the directories given each shard comes from
        for source, (directory, manifest) in enumerate(zip(self.directories, self.manifests, strict=True)):
            for record in manifest.shards:
                path = directory / record.file
                if not path.is_file():
                    raise ShardError(f"{path}: listed in the manifest but missing (run step-cache verify)")
                meta = read_shard_metadata(path)
                if len(meta["labels"]) != record.clips:
                    raise ShardError(
                        f"{path}: holds {len(meta['labels'])} clips but the manifest says {record.clips}"
                        " (run step-cache verify)"
                    )
                self.paths.append(path)
                parts.append(meta)
                sources.append(source)
        if not parts:
            raise ShardError(f"{', '.join(map(str, self.directories))}: no completed shards yet")
        self.shard_sizes = np.array([len(p["labels"]) for p in parts])
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_sizes)])
        meta = {key: np.concatenate([p[key] for p in parts]) for key in METADATA}
        self.labels: np.ndarray = meta["labels"]
        self.videos: np.ndarray = meta["video"]
        self.clip_index: np.ndarray = meta["clip"]
        self.splits: np.ndarray = meta["split"]
        self.frame_indices: np.ndarray = meta["frame_indices"]
        self.num_frames: np.ndarray = meta["num_frames"]
        self.short: np.ndarray = meta["short"]
        if len(self.directories) > 1:
            self._refuse_shared_videos(parts, sources)
        self._handles: dict[int, h5py.File] = {}
        self._pid = os.getpid()

    def _refuse_shared_videos(self, parts: list[dict[str, np.ndarray]], sources: list[int]) -> None:
        """Metrics average clips per video key and splits keep a video on one side: two caches holding the same
        key (the same relative path under two roots, or one cache given twice) would be merged silently."""
        owners: dict[str, int] = {}
        for meta, source in zip(parts, sources, strict=True):
            for video in np.unique(meta["video"]):
                if owners.setdefault(video, source) != source:
                    first, second = self.directories[owners[video]], self.directories[source]
                    raise ShardError(
                        f"video {video} is in both {first} and {second}: combined caches must hold "
                        "different videos (extract each dataset from its own root, or give a directory once)"
                    )

    # -- shape information -----------------------------------------------------------------------------
    @property
    def layout(self) -> TokenLayout:
        return self.manifest.layout

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        return (self.manifest.frames, self.layout.tokens_per_frame, self.layout.dim)

    @property
    def tokens_nbytes(self) -> int:
        return int(len(self) * np.prod(self.clip_shape) * np.dtype(self.layout.dtype).itemsize)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    # -- token access ----------------------------------------------------------------------------------
    def _handle(self, shard: int) -> h5py.File:
        if os.getpid() != self._pid:  # forked into a worker: never share HDF5 handles across processes
            self._handles = {}
            self._pid = os.getpid()
        if shard not in self._handles:
            self._handles[shard] = h5py.File(self.paths[shard], "r")
        return self._handles[shard]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, row within that shard) of global clip ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"clip {index} out of range (0..{len(self) - 1})")
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return shard, int(index - self.offsets[shard])

    def read_tokens(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Tokens of the given clips, (n, T, P, D) in the stored dtype, in the order asked."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.clip_shape), dtype=np.dtype(self.layout.dtype))
        if len(indices) == 0:
            return out
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"clip indices out of range 0..{len(self) - 1}")
        shards = np.searchsorted(self.offsets, indices, side="right") - 1
        for shard in np.unique(shards):
            positions = np.nonzero(shards == shard)[0]
            rows = indices[positions] - self.offsets[shard]
            unique_rows, inverse = np.unique(rows, return_inverse=True)
            dataset = self._handle(int(shard))["tokens"]
            # Contiguous runs go straight into one buffer with read_direct: h5py's fancy indexing is ~30x slower
            # per row, and slicing allocates a temporary per run.
            block = np.empty((len(unique_rows), *self.clip_shape), dtype=out.dtype)
            breaks = np.nonzero(np.diff(unique_rows) != 1)[0] + 1
            start = 0
            for run in np.split(unique_rows, breaks):
                dataset.read_direct(block, np.s_[run[0] : run[-1] + 1], np.s_[start : start + len(run)])
                start += len(run)
            out[positions] = block[inverse]
        return out

    def read_shard_tokens(self, shard: int) -> np.ndarray:
        """All tokens of one shard in one contiguous read (the fast path for loading a cache into memory)."""
        return self._handle(shard)["tokens"][...]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __enter__(self) -> ShardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}  # HDF5 handles do not pickle; workers reopen lazily
        return state


def check_compatible(a: Manifest, b: Manifest, name_a: str, name_b: str) -> None:
    """Refuse to combine caches whose tokens are not interchangeable (backbone, frames, layout, classes)."""
    differences = extraction_differences(a.extraction, b.extraction)
    if a.classes != b.classes:
        differences.append(f"classes: {a.classes} != {b.classes}")
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise ManifestError(f"{name_b} does not match {name_a}: {shown}")


def open_shards(directories: str | Path | Sequence[str | Path]) -> ShardSet:
    """Open one shard directory (or several with identical extraction settings) for reading."""
    if isinstance(directories, (str, Path)):
        directories = [directories]
    return ShardSet(list(directories))


__all__ = [
    "ClipRecord",
    "ManifestError",
    "ShardError",
    "ShardSet",
    "ShardWriter",
    "file_sha256",
    "open_shards",
    "read_shard_metadata",
    "shard_name",
]
