"""HDF5 token shards: the reader of whole caches (``open_shards``, ``ShardSet``).

Each shard file, its datasets and the crash-safe writer are in ``step_cache.cache.shard_file``; their names are
importable from here too, as before. See ``docs/shard-format.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from step_cache.cache.files import file_sha256
from step_cache.cache.identity import normal_root, qualified_groups, qualify
from step_cache.cache.integrity import IntegrityError, check_shards
from step_cache.cache.manifest import (
    Manifest,
    ManifestError,
    ShardRecord,
    TokenLayout,
    extraction_differences,
    read_manifest,
)
from step_cache.cache.quantize import SCALE_DTYPE, dequantize
from step_cache.cache.raw_chunks import raw_reads_enabled, read_rows_raw
from step_cache.cache.read_ahead import ChunkRanges, will_need
from step_cache.cache.selection import Selection, read_pieces, read_rows, select
from step_cache.cache.shard_file import (
    COMPRESSIONS,
    CROP_METADATA,
    METADATA,
    STRING,
    VIEW_METADATA,
    ClipRecord,
    ShardError,
    ShardWriter,
    compression_filter,
    load_compression_plugins,
    read_shard_metadata,
    read_shard_settings,
    shard_name,
)


def _has_roots(manifest: Manifest) -> bool:
    """Whether a manifest merges parts of several video roots (its shard entries record each part's root)."""
    return any(record.root is not None for record in manifest.shards)


def shard_root(manifest: Manifest, record: ShardRecord) -> str | None:
    """The videos root of a shard's keys: its entry's (a merge of several roots), else the cache's."""
    return normal_root(record.root if record.root is not None else manifest.source.get("videos"))


class ShardSet:
    """Read access to one or more shard directories with identical extraction settings.

    Metadata of every clip is loaded at open (small); tokens are read on demand. HDF5 files are opened lazily
    and per process, so a ShardSet can be handed to DataLoader workers (each opens its own handles).
    """

    def __init__(self, directories: Sequence[str | Path], check: bool = True, progress: bool = False):
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
        if check:  # never read a shard whose bytes changed after it was published (step_cache.cache.integrity)
            for directory, manifest in zip(self.directories, self.manifests, strict=True):
                check_shards(directory, manifest.shards, progress=progress)
        self.paths: list[Path] = []
        self._cls_copy: list[bool] = []  # per shard: its cache stores the CLS tokens once more (dataset cls)
        parts: list[dict[str, np.ndarray]] = []
        groups: list[tuple[int, str | None]] = []  # per shard: the directory given it comes from, and its root
        for source, (directory, manifest) in enumerate(zip(self.directories, self.manifests, strict=True)):
            for record in manifest.shards:
                path = directory / record.file
                if not path.is_file():
                    raise ShardError(f"{path}: listed in the manifest but missing (run step-cache verify)")
                meta = read_shard_metadata(path, manifest.classes)  # labels index these classes
                if len(meta["labels"]) != record.clips:
                    raise ShardError(
                        f"{path}: holds {len(meta['labels'])} clips but the manifest says {record.clips}"
                        " (run step-cache verify)"
                    )
                self.paths.append(path)
                self._cls_copy.append(bool(manifest.storage.get("cls_copy", False)))
                parts.append(meta)
                groups.append((source, shard_root(manifest, record)))
        if not parts:
            raise ShardError(f"{', '.join(map(str, self.directories))}: no completed shards yet")
        self.shard_sizes = np.array([len(p["labels"]) for p in parts])
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_sizes)])
        meta = {key: np.concatenate([p[key] for p in parts]) for key in (*METADATA, *VIEW_METADATA, *CROP_METADATA)}
        self.labels: np.ndarray = meta["labels"]
        # A video's identity: its key within one root; across roots, the root it came from + its key.
        several = len(set(groups)) > 1
        self.videos: np.ndarray = self._video_identities(parts, groups) if several else meta["video"]
        self.clip_index: np.ndarray = meta["clip"]
        self.splits: np.ndarray = meta["split"]
        self.frame_indices: np.ndarray = meta["frame_indices"]
        self.num_frames: np.ndarray = meta["num_frames"]
        self.short: np.ndarray = meta["short"]
        self.views: np.ndarray = meta["view"]  # 0: clean view; 1..N: augmented views of training videos
        self.view_params: np.ndarray = meta["view_params"]
        self.crops: np.ndarray = meta["crop"]  # spatial test-view crop of a val/test clip; 0 without test views
        self._handles: dict[int, h5py.File] = {}
        self._chunks: dict[tuple[int, str], ChunkRanges] = {}  # where each shard's chunks lie (read_ahead)
        self._pid = os.getpid()

    def _video_identities(self, parts: list[dict[str, np.ndarray]], groups: list[tuple[int, str | None]]) -> np.ndarray:
        """Per-clip video identities of combined caches, or of a cache merged from several roots: each shard's group
        is (the directory it was given in, its root); keys are qualified where groups of other roots share a source
        file (``step_cache.cache.identity``)."""
        order = list(dict.fromkeys(groups))
        keys: list[list[str]] = [[] for _ in order]  # each group's distinct keys, in clip order
        for meta, group in zip(parts, groups, strict=True):
            keys[order.index(group)].extend(np.unique(meta["video"]).tolist())
        names = [
            f"{self.directories[source]} (its part from {root})" if _has_roots(self.manifests[source]) else
            str(self.directories[source])
            for source, root in order
        ]  # fmt: skip
        qualified = qualified_groups(keys, [root for _, root in order], names)
        return np.concatenate([
            np.array([qualify(video, group[1]) for video in meta["video"].tolist()], dtype=object)
            if order.index(group) in qualified
            else meta["video"]
            for meta, group in zip(parts, groups, strict=True)
        ])  # fmt: skip

    # -- shape information -----------------------------------------------------------------------------
    @property
    def layout(self) -> TokenLayout:
        return self.manifest.layout

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        """(T, P, D) of one clip's tokens of one layer (``layout.layers``: the layers stored per clip)."""
        return (self.manifest.frames, self.layout.tokens_per_frame, self.layout.dim)

    @property
    def tokens_nbytes(self) -> int:
        """Bytes of all tokens as stored (int8: values and scales)."""
        return int(len(self) * self.layout.clip_bytes(self.manifest.frames))

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

    def read_stored(
        self,
        indices: Sequence[int] | np.ndarray,
        layers: Sequence[int] | None = None,
        part: str = "all",
        *,
        out: np.ndarray | None = None,
        advise: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Tokens of the given clips as stored, in the order asked: values (n, T, P, D) in the stored dtype and, for
        an int8 cache, their scales (n, T, P) (else None); a cache with a layer axis gives (n, L', T, P, D).
        ``layers``: positions into the stored layers (``layout.layers``; None = all); ``part="cls"``: only the CLS
        tokens (P = C), read from the CLS copy where the cache has one (``step_cache.cache.selection``).
        ``out``: a C-contiguous array of the values' shape and dtype to read into (e.g. shared memory) instead of
        a new one. ``advise``: first ask the kernel for every chunk the read touches (``read_ahead``; for reads
        scattered over the cache, such as a streamed batch). ``read_tokens`` is this, dequantized."""
        selection = select(self.layout, layers, part)
        indices = np.asarray(indices, dtype=np.int64)
        frames, dim = self.manifest.frames, self.layout.dim
        shape, dtype = (len(indices), *selection.clip_shape(frames, dim)), np.dtype(self.layout.dtype)
        if out is not None and (out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous):
            raise ValueError(f"out: expected a C-contiguous {shape} {dtype} array, got {out.shape} {out.dtype}")
        values = np.empty(shape, dtype=dtype) if out is None else out
        quantized = self.layout.quantized
        scales = np.empty((len(indices), *selection.clip_shape(frames, None)), SCALE_DTYPE) if quantized else None
        if len(indices) == 0:
            return values, scales
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"clip indices out of range 0..{len(self) - 1}")
        order = np.argsort(indices, kind="stable")  # positions by clip: stretches of consecutive clips read as one
        shards = np.searchsorted(self.offsets, indices[order], side="right") - 1
        work = [(int(shard), read_pieces(indices[order[shards == shard]] - self.offsets[shard], order[shards == shard]))
                for shard in np.unique(shards)]  # (shard, its pieces)  # fmt: skip
        # Every shard's chunks are asked for before the first read: advising shard by shard just before reading it
        # left the disk idle between shards (strace of a 64-clip batch over 4 shards).
        for shard, pieces in work if advise else ():
            names = self._datasets(shard, selection, quantized)
            chunks = [self._chunk_ranges(shard, name) for name in names]
            ranges = (r for c in chunks for row, n, _ in pieces for r in c.ranges(row, n, selection.layers))
            will_need(self._handle(shard), ranges)
        for shard, pieces in work:
            self._read_rows(shard, pieces, selection, values, scales)
        return values, scales

    def _datasets(self, shard: int, selection: Selection, quantized: bool) -> tuple[str, ...]:
        """The datasets a read of ``selection`` uses in ``shard``: tokens or the CLS copy, and their scales."""
        copy = selection.part == "cls" and self._cls_copy[shard]
        if copy and "cls" not in self._handle(shard):
            raise ShardError(f"{self.paths[shard]}: the manifest records a CLS copy, the shard has none (run verify)")
        names = ("cls", "cls_scales") if copy else ("tokens", "token_scales")
        return names if quantized else names[:1]

    def _read_rows(self, shard: int, pieces: list[tuple[int, int, int]], selection: Selection, values: np.ndarray,
                   scales: np.ndarray | None) -> None:  # fmt: skip
        handle = self._handle(shard)
        names = self._datasets(shard, selection, scales is not None)
        copy = names[0] == "cls"
        raw = (copy or selection.part == "all") and raw_reads_enabled()  # else HDF5 slices each frame's tokens
        for name, target in zip(names, (values, scales), strict=False):
            if not (raw and read_rows_raw(handle, self._chunk_ranges(shard, name), pieces, selection.layers, target)):
                read_rows(handle[name], pieces, selection, copy, target, scales=target is scales)

    def _chunk_ranges(self, shard: int, name: str) -> ChunkRanges:
        key = (shard, name)
        if key not in self._chunks:
            self._chunks[key] = ChunkRanges(self._handle(shard)[name], self.layout.layers is not None)
        return self._chunks[key]

    def read_tokens(
        self,
        indices: Sequence[int] | np.ndarray,
        dtype: np.dtype | str | None = None,
        layers: Sequence[int] | None = None,
        part: str = "all",
    ) -> np.ndarray:
        """Tokens of the given clips, (n, T, P, D) ((n, L', T, P, D) with a layer axis; ``layers`` and ``part`` as
        for ``read_stored``) in the order asked, in ``layout.read_dtype``: as stored for a float cache, dequantized
        to float16 for an int8 one. ``dtype="float32"`` returns float32 instead (for an int8 cache it also spares
        numpy's slow float32-to-float16 conversion)."""
        values, scales = self.read_stored(indices, layers, part)
        dtype = np.dtype(dtype or self.layout.read_dtype)
        return _dequantized(values, scales, dtype).astype(dtype, copy=False)

    def read_shard_stored(
        self, shard: int, layers: Sequence[int] | None = None, part: str = "all"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """All tokens of one shard as stored (values, and scales for int8), in one contiguous read each (per layer
        when ``layers`` picks some; ``layers`` and ``part`` as for ``read_stored``)."""
        rows = np.arange(self.offsets[shard], self.offsets[shard + 1])
        return self.read_stored(rows, layers, part)

    def read_shard_tokens(self, shard: int, layers: Sequence[int] | None = None, part: str = "all") -> np.ndarray:
        """All tokens of one shard in one contiguous read (the fast path for loading a cache into memory)."""
        return _dequantized(*self.read_shard_stored(shard, layers, part), self.layout.read_dtype)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles, self._chunks = {}, {}

    def __enter__(self) -> ShardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_chunks"] = {}, {}  # HDF5 handles do not pickle; workers reopen lazily
        return state


def _dequantized(values: np.ndarray, scales: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    return values if scales is None else dequantize(values, scales, dtype)


def check_compatible(a: Manifest, b: Manifest, name_a: str, name_b: str) -> None:
    """Refuse to combine caches whose tokens are not interchangeable (backbone, frames, layout, classes)."""
    differences = extraction_differences(a.extraction, b.extraction)
    if a.classes != b.classes:
        differences.append(f"classes: {a.classes} != {b.classes}")
    if differences:
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        # each difference reads "name_a's != name_b's"; None: the setting is absent (e.g. no layer axis)
        raise ManifestError(f"{name_b} does not match {name_a}: {shown} ({name_a}'s first; None: not set)")


def open_shards(directories: str | Path | Sequence[str | Path], check: bool = True, progress: bool = False) -> ShardSet:
    """Open one shard directory (or several with identical extraction settings) for reading.

    ``check``: first make sure no shard changed since it was published (size and file times against what was
    remembered, a checksum where they differ, e.g. in a copied cache); a changed shard raises ``IntegrityError``
    naming it. ``check=False`` is for quick looks at metadata (``inspect``)."""
    if isinstance(directories, (str, Path)):
        directories = [directories]
    return ShardSet(list(directories), check=check, progress=progress)


CacheInput = str | Path | Sequence[str | Path] | ShardSet  # a cache as the library's functions take it


def as_shards(cache: CacheInput) -> ShardSet:
    """``cache`` opened for reading (one or more cache directories, ``open_shards``), or as it is when open."""
    return cache if isinstance(cache, ShardSet) else open_shards(cache)


__all__ = [
    "COMPRESSIONS",
    "METADATA",
    "STRING",
    "VIEW_METADATA",
    "CacheInput",
    "ClipRecord",
    "IntegrityError",
    "ManifestError",
    "ShardError",
    "ShardSet",
    "ShardWriter",
    "as_shards",
    "check_compatible",
    "compression_filter",
    "file_sha256",
    "load_compression_plugins",
    "open_shards",
    "read_shard_metadata",
    "read_shard_settings",
    "shard_name",
]
