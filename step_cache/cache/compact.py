"""``step-cache compact``: rewrite a cache in a smaller form without running the backbone again.

Extraction is the expensive step; precision and width are cheap to change afterwards. ``compact`` reads SRC's
tokens (integrity-checked, dequantized when SRC is int8), optionally averages N x N patch neighbourhoods, and writes
them to DST with the same crash-safe machinery as ``extract``: shards published whole and atomically, the manifest
rewritten after each, a lock on DST, and a re-run of the same command resuming where it stopped (videos already
in DST are skipped). SRC is only read; DST may not be SRC nor hold any of its shards.

Compacting a float cache to another dtype writes exactly the extraction settings (and, for int8, the very values)
that ``extract --dtype`` would have written, so the two kinds of cache combine and resume into each other. What
extract would not have produced is recorded in ``tokens``: ``pooled_after_storage`` (patches averaged from stored
values rather than the backbone's float32 ones), ``dequantized_from`` (int8 tokens written back as floats) and
``projection`` (tokens projected on principal directions, ``step_cache.cache.projection``).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from step_cache.cache.disk_space import full_disk_said, is_disk_full
from step_cache.cache.layers import kept_layers
from step_cache.cache.locking import DirectoryLock
from step_cache.cache.manifest import Failure, Manifest, TokenLayout
from step_cache.cache.projection import Projection, fit_pca, sample_training_clips, subsample_tokens
from step_cache.cache.quantize import check_dtype
from step_cache.cache.shard_file import COMPRESSIONS, ClipRecord
from step_cache.cache.shards import ShardSet, open_shards
from step_cache.cache.writer import CacheWriter, next_shard_index, open_output, recover, storage_record
from step_cache.errors import StepCacheError
from step_cache.interface import option

log = logging.getLogger(__name__)
_BLOCK_BYTES = 128 * 2**20  # tokens read per step: bounded memory, few HDF5 calls


class CompactionError(StepCacheError, RuntimeError):
    """A compaction that cannot start (same directory, bad option) or was stopped."""


@dataclass
class CompactReport:
    src: Path
    out: Path
    manifest: Manifest
    videos: int = 0  # written in this run
    clips: int = 0
    skipped: int = 0  # videos already in DST
    seconds: float = 0.0
    src_bytes: int = 0
    out_bytes: int = 0

    def summary(self) -> str:
        layout = self.manifest.layout
        ratio = self.out_bytes / self.src_bytes if self.src_bytes else 0.0
        return (
            f"{self.out}: compacted {self.videos} videos ({self.clips} clips) of {self.src} in {self.seconds:.1f} s; "
            f"{self.skipped} already done; {layout.dtype} tokens, {layout.tokens_per_frame} per frame of width "
            f"{layout.dim}: {self.out_bytes / 2**20:.1f} MiB, {ratio:.3f}x the source's "
            f"{self.src_bytes / 2**20:.1f} MiB"
        )


def compacted_layout(layout: TokenLayout, dtype: str | None, pool_patches: int) -> TokenLayout:
    """The token layout after changing the dtype and pooling N x N patches (ceil: a partial edge window averages
    the patches it holds, as ``extract --pool-patches`` does)."""
    if pool_patches < 1:
        raise CompactionError(f"{option('pool_patches')} must be >= 1, got {pool_patches}")
    grid = (-(-layout.grid[0] // pool_patches), -(-layout.grid[1] // pool_patches))
    return replace(
        layout, dtype=check_dtype(dtype or layout.dtype), grid=grid, patch_pool=layout.patch_pool * pool_patches
    )


def pool_grid(tokens: np.ndarray, cls_tokens: int, grid: tuple[int, int], pool: int) -> np.ndarray:
    """(n, [L,] T, P, D) tokens -> the same with the patch grid averaged over pool x pool windows, in float32."""
    x = np.asarray(tokens, dtype=np.float32)
    if pool == 1:
        return x
    if x.ndim == 5:  # several layers: each pooled alike
        return pool_grid(x.reshape(-1, *x.shape[2:]), cls_tokens, grid, pool).reshape(*x.shape[:3], -1, x.shape[-1])
    n, frames, _, dim = x.shape
    rows, cols = grid
    patches = x[:, :, cls_tokens:].reshape(n, frames, rows, cols, dim)
    out_rows, out_cols = -(-rows // pool), -(-cols // pool)
    pooled = np.empty((n, frames, out_rows, out_cols, dim), dtype=np.float32)
    for i in range(out_rows):
        for j in range(out_cols):
            window = patches[:, :, i * pool : (i + 1) * pool, j * pool : (j + 1) * pool]
            pooled[:, :, i, j] = window.mean(axis=(2, 3))
    return np.concatenate([x[:, :, :cls_tokens], pooled.reshape(n, frames, out_rows * out_cols, dim)], axis=2)


def _refuse_same(src: Path, out: Path, shards: ShardSet) -> None:
    target = out.resolve()
    if target == src.resolve() or any(path.resolve().parent == target for path in shards.paths):
        raise CompactionError(
            f"{option('out', str(out))} is the source cache {src} (or holds its shards): compact never overwrites "
            f"its source; choose another {option('out')}"
        )


def compact(
    src: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    pool_patches: int = 1,
    layers: str | None = None,
    project: int | None = None,
    project_clips: int = 512,
    project_seed: int = 0,
    shard_size_mb: float = 1024.0,
    compression: str = "none",
    overwrite: bool = False,
    progress: bool = True,
) -> CompactReport:
    """Rewrite the cache in ``src`` into ``out`` with tokens in ``dtype`` (default: src's) and ``pool_patches`` x
    ``pool_patches`` patch neighbourhoods averaged and, with ``project=K``, projected on their top-K principal
    directions (PCA on ``project_clips`` training clips drawn with ``project_seed``; step_cache.cache.projection).
    ``layers``: keep only these of a cache's stored layers (``lastN`` or block indices, ``step_cache.cache.layers``;
    None keeps all).
    Re-running the same call resumes; see the module docstring."""
    src, out = Path(src), Path(out)
    if compression not in COMPRESSIONS:
        raise CompactionError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    if shard_size_mb <= 0:
        raise CompactionError(f"{option('shard_size_mb', shard_size_mb)} must be positive (MiB)")
    shards = open_shards(src, progress=progress)  # a changed shard stops here, before anything is written
    _refuse_same(src, out, shards)
    source_manifest = shards.manifest
    layout = compacted_layout(source_manifest.layout, dtype, pool_patches)
    kept = None if layers is None else kept_layers(layers, source_manifest.layout.layers)
    if kept is not None and layout.layers is not None:  # the same values extract --layers gives for these blocks
        layout = replace(layout, layers=tuple(layout.layers[p] for p in kept))
    projection = None
    if project is not None:
        if layout.layers is not None:
            raise CompactionError(
                f"{option('project')} fits one set of principal directions, for a cache without a layer axis; {src} "
                f"stores blocks {list(source_manifest.layout.layers)}"
            )
        projection = _fit_projection(shards, project, pool_patches, project_clips, project_seed)
        layout = replace(layout, dim=project)
    tokens = layout.to_dict()
    if projection is not None:
        tokens["projection"] = projection.record()
    # Say what differs from tokens extract would have written: pooled from stored values (not the backbone's
    # float32 ones), or read back from int8 into a float dtype.
    if pool_patches > 1:
        tokens["pooled_after_storage"] = {"patch_pool": source_manifest.layout.patch_pool, "dtype": shards.layout.dtype}
    if shards.layout.quantized and not layout.quantized:
        tokens["dequantized_from"] = shards.layout.dtype
    extraction = {**source_manifest.extraction, "tokens": tokens}
    source = {
        **source_manifest.source,
        "compacted_from": str(src.resolve()),
        "compacted_from_manifest": source_manifest.content_hash(),
        "finished": False,
    }
    with full_disk_said(out, "compaction"), DirectoryLock(out):
        manifest = open_output(out, extraction, source_manifest.classes, source_manifest.pairs, source, overwrite)
        if projection is not None:
            projection.save(out)  # the same fit as the manifest records (a different one was refused above)
        manifest.warnings = list(source_manifest.warnings)
        done = recover(out, manifest)
        manifest.storage = storage_record(manifest, compression)
        report = CompactReport(src, out, manifest, src_bytes=sum(r.bytes for r in source_manifest.shards))
        failures = {f.video: f for f in source_manifest.failures}  # extraction failures stay on record
        shard_clips = max(manifest.clips_per_video, int(shard_size_mb * 2**20 // layout.clip_bytes(manifest.frames)))
        state = CacheWriter(
            out, manifest, layout, manifest.frames, next_shard_index(manifest), shard_clips, compression
        )
        started = time.perf_counter()
        try:
            _copy(shards, state, done, pool_patches, projection, report, failures, progress, kept)
            manifest.source["finished"] = True
            state.finish(failures)
        except KeyboardInterrupt:
            state.finish(failures)  # whole videos only; the next run resumes after them
            raise
        except Exception as error:
            if is_disk_full(error):  # one line, the shards kept (disk_space)
                raise CompactionError(state.stop_on_full_disk(failures, "compaction")) from None
            state.abandon(failures)
            raise CompactionError(
                f"{out}: compaction stopped by {type(error).__name__}: {error}; completed shards are kept, re-run "
                "the same command to resume"
            ) from error
        finally:
            shards.close()
    report.seconds = time.perf_counter() - started
    report.out_bytes = sum(r.bytes for r in manifest.shards)
    return report


def _copy(
    shards: ShardSet,
    state: CacheWriter,
    done: set[str],
    pool: int,
    projection: Projection | None,
    report: CompactReport,
    failures: dict[str, Failure],
    progress: bool,
    kept: tuple[int, ...] | None = None,
) -> None:
    """Every video of ``shards`` not in ``done``, in the source's order, all its clips together; ``kept``: the
    positions of the stored layers to keep (None: all)."""
    layout = shards.layout
    layers = None if layout.layers is None else kept  # a cache without a layer axis has its one layer
    clip_bytes = max(1, int(np.prod(shards.clip_shape)) * 4 * (layout.layer_count if layers is None else len(layers)))
    block_clips = max(shards.manifest.clips_per_video, _BLOCK_BYTES // clip_bytes)
    bar = tqdm(total=len(shards), unit="clip", desc="compact", disable=not progress)
    # A video's clips are consecutive (within one shard, as extract writes them; grouping over the whole cache
    # also keeps together a video that a hand-made cache split across shards).
    videos = shards.videos
    breaks = [0, *(np.nonzero(videos[1:] != videos[:-1])[0] + 1).tolist(), len(videos)]
    groups = list(itertools.pairwise(breaks))
    todo = [group for group in groups if videos[group[0]] not in done]
    report.skipped += len(groups) - len(todo)
    bar.update(len(videos) - sum(b - a for a, b in todo))
    position = 0
    while position < len(todo):
        block = [todo[position]]
        position += 1
        while position < len(todo) and todo[position][1] - block[0][0] <= block_clips:
            block.append(todo[position])
            position += 1
        first, last = block[0][0], block[-1][1]
        values = shards.read_tokens(np.arange(first, last), np.float32, layers=layers)
        values = pool_grid(values, layout.cls_tokens, layout.grid, pool)
        if projection is not None:
            values = projection.apply(values)
        for a, b in block:
            state.append_video([_record(shards, index, values[index - first]) for index in range(a, b)])
            report.videos += 1
            report.clips += b - a
            bar.update(b - a)
            state.roll_over_if_full(failures)
    bar.close()


def _fit_projection(
    shards: ShardSet, k: int, pool: int, clips: int, seed: int, max_tokens: int = 200_000
) -> Projection:
    """PCA on the (pooled) tokens of a seeded sample of training clips, at most ``max_tokens`` token vectors."""
    layout = shards.layout
    indices = sample_training_clips(shards.labels, shards.splits, clips, seed)
    per_clip = max(1, max_tokens // len(indices))
    parts = []
    for start in range(0, len(indices), 32):
        chunk = indices[start : start + 32]
        tokens = pool_grid(shards.read_tokens(chunk, np.float32), layout.cls_tokens, layout.grid, pool)
        parts.append(subsample_tokens(tokens, per_clip * len(chunk), seed + start))
    return fit_pca(np.concatenate(parts), k, fit_clips=len(indices), seed=seed)


def _record(shards: ShardSet, index: int, tokens: np.ndarray) -> ClipRecord:
    return ClipRecord(
        tokens=tokens,
        label=int(shards.labels[index]),
        video=str(shards.videos[index]),
        clip=int(shards.clip_index[index]),
        split=str(shards.splits[index]),
        frame_indices=shards.frame_indices[index],
        num_frames=int(shards.num_frames[index]),
        short=bool(shards.short[index]),
        view=int(shards.views[index]),  # augmented views (extract --views) are carried over as they are
        view_params=str(shards.view_params[index]),
        crop=int(shards.crops[index]),  # test views (extract --test-views) too
    )
