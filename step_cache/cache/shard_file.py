"""One HDF5 shard file: its datasets, the crash-safe writer, and reading one file's metadata.

A shard ``shard-XXXXX.h5`` holds N clips; see ``docs/shard-format.md`` for every dataset and attribute. It is
written as ``.shard-XXXXX.h5.tmp`` and renamed only once complete and flushed, so a shard that exists under its
final name is whole; the manifest then lists it with its checksum. The reader of whole caches (``ShardSet``,
``open_shards``) is in ``step_cache.cache.shards``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from step_cache.cache.disk_space import reserve
from step_cache.cache.files import file_sha256, fsync_dir
from step_cache.cache.integrity import ShardError, remember
from step_cache.cache.manifest import TEST_VIEWS_FORMAT_VERSION, VIEWS_FORMAT_VERSION, ShardRecord, TokenLayout
from step_cache.cache.quantize import SCALE_DTYPE, quantize

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
# Per-clip datasets of a cache with augmented views (format version 3); older shards read as all-clean.
VIEW_METADATA = {
    "view": np.int32,  # 0: the clean view; 1..N: augmented views of a training video
    "view_params": STRING,  # JSON of the view's drawn parameters ("" for the clean view)
}
# Per-clip dataset of a cache with test views (format version 5); older shards read as crop 0 throughout.
CROP_METADATA = {"crop": np.int32}  # spatial test-view crop of a val/test clip (0..C-1; test_views.py)


COMPRESSIONS = ("none", "lz4", "zstd", "gzip")
# The shard's labels index the manifest's classes: this attribute binds them to that list, so that an edited class
# list or a shard copied from a cache with other classes is refused (shards written before it have none).
CLASSES_ATTR = "classes_sha256"


def classes_sha256(classes: Sequence[str]) -> str:
    """sha256 of the class list as JSON (``json.dumps`` defaults): the value of a shard's ``classes_sha256``."""
    return hashlib.sha256(json.dumps(list(classes)).encode()).hexdigest()


def classes_problem(attrs: h5py.AttributeManager, classes: Sequence[str]) -> str | None:
    """Why a shard's labels cannot be read against ``classes`` (None when they can, or the shard predates the
    attribute)."""
    recorded = attrs.get(CLASSES_ATTR)
    if recorded is None:
        return None
    recorded = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
    if recorded == classes_sha256(classes):
        return None
    return (
        "its labels index another class list than the manifest's (the manifest's classes were edited, or the shard "
        "comes from a cache with other classes)"
    )


CLS_CHUNK_CLIPS = 64  # clips per chunk of the CLS copy: large chunks make a CLS-only epoch a few large reads


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

    tokens: np.ndarray  # (T, P, D) float, (L, T, P, D) for a cache with layers; an int8 cache's writer quantizes them
    label: int
    video: str
    clip: int
    split: str
    frame_indices: np.ndarray  # (T,)
    num_frames: int
    short: bool
    view: int = 0  # 0: the clean view; 1..N: augmented views (a cache written with views=True only)
    view_params: str = ""  # JSON of the augmented view's parameters
    scales: np.ndarray | None = None  # (T, P) float16: ``tokens`` are int8 values already quantized (on the device)
    crop: int = 0  # spatial test-view crop (a cache written with test_views=True only)


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
        views: bool = False,
        reserve_bytes: int = 0,
        classes: Sequence[str] | None = None,
        cls_copy: bool = False,
        test_views: bool = False,
    ):
        self.directory = Path(directory)
        self.name = name
        self.final_path = self.directory / name
        self.tmp_path = self.directory / f".{name}.tmp"
        self.count = 0
        self.videos: set[str] = set()
        self._file = h5py.File(self.tmp_path, "w")
        self._reserved = reserve_bytes > 0
        if self._reserved:  # HDF5 must never meet a full disk (disk_space): its bytes are allocated before use
            try:
                self._file.flush()
                reserve(self.tmp_path, reserve_bytes)
            except BaseException:
                self.abandon()
                raise
        layer_axis = () if layout.layers is None else (len(layout.layers),)
        tokens_shape = (*layer_axis, frames, layout.tokens_per_frame, layout.dim)
        # One chunk per clip (and layer): a random clip read touches exactly one chunk per layer it reads.
        chunk = (1, *(1 for _ in layer_axis), *tokens_shape[len(layer_axis) :])
        self._file.create_dataset(
            "tokens",
            shape=(0, *tokens_shape),
            maxshape=(None, *tokens_shape),
            chunks=chunk,
            dtype=np.dtype(layout.dtype),
            **compression_filter(compression),
        )
        self._quantized = layout.quantized
        if self._quantized:  # version 2: int8 values, one float16 absmax scale per token beside them
            self._file.create_dataset(
                "token_scales",
                shape=(0, *tokens_shape[:-1]),
                maxshape=(None, *tokens_shape[:-1]),
                chunks=chunk[:-1],
                dtype=SCALE_DTYPE,
            )
        # storage.cls_copy: the CLS tokens once more, many clips per chunk, so a CLS-only read touches only them.
        # Kept in memory (C/P of the shard) and written once in finish(), like the metadata.
        self._cls_tokens = layout.cls_tokens if cls_copy else 0
        self._cls: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._frames = frames
        # Metadata is small: keep it in memory and write each dataset once, in finish().
        self._fields = {**METADATA, **(VIEW_METADATA if views else {}), **(CROP_METADATA if test_views else {})}
        self._metadata: dict[str, list] = {key: [] for key in self._fields}
        # version 1 unless the tokens need 2, the views 3 or the test views 5 (Manifest.format_version)
        self._file.attrs["format_version"] = max(
            layout.format_version, VIEWS_FORMAT_VERSION if views else 1, TEST_VIEWS_FORMAT_VERSION if test_views else 1
        )
        self._file.attrs["complete"] = False
        self._file.attrs["settings_sha256"] = settings  # the cache's extraction settings (manifest.settings_hash)
        if classes is not None:
            self._file.attrs[CLASSES_ATTR] = classes_sha256(classes)
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
            if self._quantized:
                self._file["token_scales"].resize(len(tokens), axis=0)
        if np.shape(record.tokens) != tokens.shape[1:]:
            raise ShardError(f"{self.tmp_path}: a clip of shape {np.shape(record.tokens)}, expected {tokens.shape[1:]}")
        if self._quantized:
            values, scales = quantize(record.tokens) if record.scales is None else (record.tokens, record.scales)
        else:
            values, scales = record.tokens, None
        tokens[self.count] = values
        if scales is not None:
            self._file["token_scales"][self.count] = scales
        if self._cls_tokens:
            cls = np.array(values[..., : self._cls_tokens, :], dtype=tokens.dtype)
            self._cls.append((cls, None if scales is None else np.array(scales[..., : self._cls_tokens])))
        for key, value in (
            ("labels", record.label),
            ("video", record.video),
            ("clip", record.clip),
            ("split", record.split),
            ("frame_indices", record.frame_indices),
            ("num_frames", record.num_frames),
            ("short", record.short),
            ("view", record.view),
            ("view_params", record.view_params),
            ("crop", record.crop),
        ):
            if key in self._metadata:
                self._metadata[key].append(value)
            elif key == "view" and value:
                raise ShardError(f"{self.tmp_path}: an augmented view given to a shard written without views")
            elif key == "crop" and value:
                raise ShardError(f"{self.tmp_path}: a test-view crop given to a shard written without test views")
        self.count += 1
        self.videos.add(record.video)

    def finish(self) -> ShardRecord:
        """Mark complete, flush to disk, rename to the final name; returns the manifest entry."""
        self.count = self._committed
        self._metadata = {key: values[: self.count] for key, values in self._metadata.items()}
        self.videos = set(self._metadata["video"])
        self._file["tokens"].resize(self.count, axis=0)
        if self._quantized:
            self._file["token_scales"].resize(self.count, axis=0)
        if self._cls_tokens:
            self._write_cls_copy()
        for key, dtype in self._fields.items():
            shape = (self.count, self._frames) if key == "frame_indices" else (self.count,)
            values = np.asarray(self._metadata[key], dtype=object if dtype is STRING else dtype).reshape(shape)
            self._file.create_dataset(key, data=values, dtype=dtype, maxshape=(None, *shape[1:]), chunks=True)
        self._file.attrs["complete"] = True
        self._file.attrs["num_clips"] = self.count
        self._file.flush()
        end = self._file.id.get_filesize()  # HDF5's end of data; a reserved file is longer
        self._file.close()
        if self._reserved:
            os.truncate(self.tmp_path, end)  # give back the reserved bytes the shard did not use
            try:
                h5py.File(self.tmp_path, "r").close()  # HDF5 refuses a file cut before its end of data
            except OSError as error:
                raise ShardError(f"{self.tmp_path}: unreadable after trimming its reserved space ({error})") from None
        with open(self.tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.tmp_path, self.final_path)
        fsync_dir(self.directory)
        record = ShardRecord(
            file=self.name,
            clips=self.count,
            videos=len(self.videos),
            bytes=self.final_path.stat().st_size,
            sha256=file_sha256(self.final_path),
        )
        remember([(self.final_path, record.sha256)])  # readers then trust it without checksumming it again
        return record

    def _write_cls_copy(self) -> None:
        """Datasets ``cls`` (N, [L,] T, C, D) and, for int8, ``cls_scales`` (N, [L,] T, C): one chunk per
        ``CLS_CHUNK_CLIPS`` clips and layer, uncompressed (C/P of the shard's bytes)."""
        tokens = self._file["tokens"]
        head = tokens.shape[1:-2]  # ([L,] T)
        layered = len(head) == 2
        datasets = {"cls": ((self._cls_tokens, tokens.shape[-1]), tokens.dtype)}
        if self._quantized:
            datasets["cls_scales"] = ((self._cls_tokens,), np.dtype(SCALE_DTYPE))
        for part, (name, (tail, dtype)) in enumerate(datasets.items()):
            shape = (*head, *tail)
            rows = [clip[part] for clip in self._cls[: self.count]]
            data = np.stack(rows) if rows else np.empty((0, *shape), dtype)
            chunk = (CLS_CHUNK_CLIPS, *((1,) if layered else ()), *shape[1 if layered else 0 :])
            self._file.create_dataset(name, data=data, maxshape=(None, *shape), chunks=chunk)
        self._cls = []

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


def shard_classes_problem(path: str | Path, classes: Sequence[str]) -> str | None:
    """``classes_problem`` of the shard file at ``path``."""
    with h5py.File(path, "r") as handle:
        return classes_problem(handle.attrs, classes)


def read_shard_metadata(path: str | Path, classes: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per-clip metadata of one complete shard (strings decoded). Raises ShardError for a half-written file, and
    for a shard bound to another class list than ``classes`` (when given)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            if not handle.attrs.get("complete", False):
                raise ShardError(f"{path}: shard is incomplete (its writer did not finish); it is never read")
            if classes is not None and (problem := classes_problem(handle.attrs, classes)):
                raise ShardError(f"{path}: {problem}; restore the cache's own manifest or shard, or extract again")
            missing = [key for key in ("tokens", *METADATA) if key not in handle]
            if missing:
                raise ShardError(f"{path}: shard lacks dataset(s) {', '.join(missing)}")
            meta = {
                key: handle[key].asstr()[...] if handle[key].dtype == STRING else handle[key][...] for key in METADATA
            }
            count = len(meta["labels"])
            # shards before version 3 hold clean views only; before version 5, one (centre) crop per clip
            for key, dtype in {**VIEW_METADATA, **CROP_METADATA}.items():
                if key in handle:
                    meta[key] = handle[key].asstr()[...] if dtype is STRING else handle[key][...]
                else:
                    meta[key] = np.full(count, "", dtype=object) if dtype is STRING else np.zeros(count, dtype)
            return meta
    except OSError as error:
        raise ShardError(f"{path}: cannot open shard ({error})") from None
