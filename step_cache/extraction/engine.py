"""Stage one: run a frozen backbone over videos once and store per-frame tokens in crash-safe shards.

Pipeline: catalogue -> decode workers (parallel processes) -> frame batches on the device -> shard writer.
A run into an existing directory resumes: videos already in completed shards are skipped, a half-written shard
is discarded, and the extraction settings must match the manifest's (``overwrite=True`` starts over).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from step_cache.cache.disk_space import DiskFullError, disk_full_message, is_disk_full
from step_cache.cache.layers import check_spec
from step_cache.cache.locking import DirectoryLock
from step_cache.cache.manifest import TokenLayout
from step_cache.cache.quantize import TOKEN_DTYPES
from step_cache.cache.shards import COMPRESSIONS
from step_cache.cache.writer import ExtractionError, open_output, recover, storage_record
from step_cache.catalog import VideoItem, class_names, discover_videos, read_annotations, read_pairs
from step_cache.cpu_budget import worker_count
from step_cache.devices import resolve_device
from step_cache.extraction.backbones import Backbone, load_backbone, resolve_backbone
from step_cache.extraction.decoders import DECODERS, DEFAULT_DECODER, decoder_settings
from step_cache.extraction.device_decode import open_decode_pool
from step_cache.extraction.extract_report import ExtractReport
from step_cache.extraction.parts import part_directory, partition
from step_cache.extraction.pipeline import ExtractionRun, video_row_count
from step_cache.extraction.quick_check import already_complete, quick_check, request_record
from step_cache.extraction.sampling import sampling_record
from step_cache.extraction.size_plan import SizeEstimate, estimate_size, read_rate
from step_cache.extraction.test_views import TestViewError, TestViews, square_side
from step_cache.extraction.views import DEFAULT_RATIO, DEFAULT_SCALE, ViewSettings
from step_cache.interface import option

log = logging.getLogger(__name__)


@dataclass
class ExtractOptions:
    """Every knob of ``extract``; the defaults are what ``step-cache extract`` uses."""

    backbone: str = "dinov2"
    weights: str = "hub"  # "hub", "random", or a path to a .safetensors/.pth file
    frames: int = 16
    clips: int = 1
    image_size: int | None = None
    pool_patches: int = 1
    layers: str = "last"  # backbone blocks to store: last, lastN or 0-based indices (step_cache.cache.layers)
    dtype: str = "float16"
    device: str = "auto"
    batch_size: int | None = None  # frames per backbone call; None: 32 on CPU, 256 on CUDA
    workers: int | None = None  # decode processes; None: one per spare CPU core
    shard_size_mb: float = 1024.0
    seed: int = 0
    strict: bool = False  # also: a video with decoder errors stops the run
    max_decode_errors: float = float("inf")  # a video whose decoder reported more errors is skipped as a failure
    allow_outside: bool = False  # annotation paths may leave the videos root (absolute, '..')
    overwrite: bool = False
    force: bool = False  # start even when the target's free space is below the size estimate (size_plan.py)
    compile: bool = False
    decoder: str = DEFAULT_DECODER  # decord, pyav, torchcodec or torchcodec-cuda (step_cache.extraction.decoders)
    decode_timeout: float = 600.0
    progress: bool = True
    compression: str = "none"  # "none", "lz4", "zstd" (Blosc, needs hdf5plugin) or "gzip"
    num_parts: int = 1  # split the catalogue into parts (one per GPU / machine / array task) ...
    part: int = 0  # ... and extract this one into OUT/parts/part-III-of-NNN
    views: int = 0  # augmented views per training video besides the clean one (step_cache.extraction.views)
    view_scale: tuple[float, float] = DEFAULT_SCALE  # random resized crop: area fraction ...
    view_ratio: tuple[float, float] = DEFAULT_RATIO  # ... and aspect ratio (width / height) ranges
    view_span: float | None = None  # a random sub-span of at least this fraction of the video (None: whole)
    view_colour: float = 0.0  # brightness/contrast/saturation factors in [1 - c, 1 + c]
    view_flip: bool = False  # horizontal flips (p = 0.5): off by default, they turn slide-left into slide-right
    flip_pairs: str | None = None  # file of 'a,b' class pairs whose labels a flip swaps
    view_seed: int = 0
    # val/test videos: S temporal segments x C spatial crops as V-JEPA's eval makes them ("2x3", (2, 3); test_views.py)
    test_views: str | tuple[int, int] | TestViews | None = None
    frame_step: int | None = None  # T frames this far apart per clip, as the anchors sample (None: segment centres)

    def __post_init__(self) -> None:
        if self.frames < 1 or self.clips < 1:
            raise ExtractionError(f"frames and clips must be >= 1 (got frames={self.frames}, clips={self.clips})")
        if self.test_views is not None:
            self.test_views = TestViews.parse(self.test_views)
        if self.frame_step is not None and self.frame_step < 1:
            raise ExtractionError(f"{option('frame_step', self.frame_step)} must be >= 1")
        if self.dtype not in TOKEN_DTYPES:
            raise ExtractionError(f"dtype must be one of {', '.join(TOKEN_DTYPES)}, got {self.dtype!r}")
        if self.shard_size_mb <= 0:
            raise ExtractionError(f"{option('shard_size_mb', self.shard_size_mb)} must be positive (MiB)")
        if self.compression not in COMPRESSIONS:
            raise ExtractionError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        self.layers = check_spec(self.layers)  # its form now; its blocks once the model is built


def extract(
    videos: str | Path | None,
    out: str | Path,
    annotations: str | Path | None = None,
    pairs: str | Path | None = None,
    items: Sequence[VideoItem] | None = None,
    **options: Any,
) -> ExtractReport:
    """Extract tokens of the videos under ``videos`` (class folders, or the rows of ``annotations``) into ``out``.

    ``items`` may replace folder discovery by an explicit list. Options: see ``ExtractOptions``.
    Returns a report; the cache is then readable with ``step_cache.open_shards(out)``.
    """
    if getattr(mp.current_process(), "_inheriting", False):
        # A decode worker started with "spawn" re-imports the caller's script; unguarded, it would extract again.
        raise ExtractionError(
            "extract() was called while a decode worker process was starting: put the code that calls it under "
            "`if __name__ == '__main__':` in your script (or pass workers=0)"
        )
    opts = ExtractOptions(**options)
    videos, out, items, classes, views = _catalogue(videos, out, annotations, items, opts)
    pairs_file = Path(pairs) if pairs else _pairs_beside(annotations)
    pair_list = read_pairs(pairs_file, classes) if pairs_file else []
    # A no-op re-run or a settings mismatch is answered now, before the backbone and the decode workers (seconds)
    if not opts.overwrite and (finished := quick_check(out, opts, views, classes, pair_list, videos, items)):
        return finished

    device = resolve_device(opts.device)
    workers = _default_workers(device.type) if opts.workers is None else opts.workers
    # Decode workers take a moment to start: spawn them now, ready once the backbone is loaded (a bad --decoder fails)
    pool = open_decode_pool(opts.decoder, device, workers, opts.frames, opts.clips, opts.decode_timeout)
    try:
        backbone = load_backbone(
            opts.backbone,
            opts.weights,
            opts.image_size,
            opts.pool_patches,
            seed=opts.seed,
            dtype=opts.dtype,
            layers=opts.layers,
        )
        if opts.test_views is not None and opts.test_views.crops > 1:
            try:  # the anchor's crops are square: refused before any video is decoded
                square_side(backbone.preprocessing.crop_size)
            except TestViewError as error:
                raise ExtractionError(str(error)) from None
        extraction = extraction_settings(backbone, opts, views)
        source = {
            "videos": str(Path(videos).resolve()) if videos is not None else None,
            "annotations": str(Path(annotations).resolve()) if annotations else None,
            "pairs": str(pairs_file.resolve()) if pairs_file else None,
            "weights_path": backbone.weights.get("path"),
            "request": request_record(opts),  # lets the next run's quick_check answer before loading the backbone
            "items": len(items),
            "finished": False,  # set once a run has tried every item
            **({"part": opts.part, "num_parts": opts.num_parts} if opts.num_parts > 1 else {}),
        }
        if not opts.overwrite and (finished := already_complete(out, extraction, classes, pair_list, source, items)):
            return finished  # nothing to do: take no lock and write nothing (the folder may be read-only)
        estimate = _estimate(out, backbone.layout, opts, items, views)
        if not estimate.fits and not opts.force:  # refused before the lock: nothing is written
            raise ExtractionError(estimate.refusal())
        try:
            with DirectoryLock(out) as lock:
                if lock.replaced_stale:
                    log.warning("%s: took over a stale lock left by pid %s", out, lock.replaced_stale.get("pid"))
                manifest = open_output(out, extraction, classes, pair_list, source, opts.overwrite)
                done = recover(out, manifest)
                manifest.storage = storage_record(manifest, opts.compression)
                return ExtractionRun(backbone, opts, out, manifest, items, done, device, views).run(pool, videos)
        except OSError as error:  # full before the first video (its lock or manifest): nothing was written
            if is_disk_full(error) and not isinstance(error, DiskFullError):
                raise ExtractionError(disk_full_message(out, "extraction", 0)) from None
            raise
    except BaseException:
        # stopping (an error, a full disk, a signal): the videos queued to workers are not wanted
        pool.close(wait=False)
        raise
    finally:
        pool.close()


def plan_extract(
    videos: str | Path | None,
    out: str | Path,
    annotations: str | Path | None = None,
    items: Sequence[VideoItem] | None = None,
    read_test: bool = True,
    **options: Any,
) -> SizeEstimate:
    """``extract --dry-run``: what ``extract`` with the same arguments would write into ``out`` (clips, bytes per
    clip, cache size, free space) and, with ``read_test``, the target disk's read rate and a stage-two epoch's read
    time. Reads no video and writes nothing (but the read test's temporary file); the backbone is built with
    random weights, which give the same token layout as any other."""
    opts = ExtractOptions(**options)
    _, out, items, _, views = _catalogue(videos, out, annotations, items, opts)
    layout = load_backbone(
        opts.backbone, "random", opts.image_size, opts.pool_patches, dtype=opts.dtype, layers=opts.layers
    ).layout
    estimate = _estimate(out, layout, opts, items, views)
    if read_test:
        estimate.read_rate = read_rate(out)
    return estimate


def _estimate(
    out: Path, layout: TokenLayout, opts: ExtractOptions, items: Sequence[VideoItem], views: ViewSettings
) -> SizeEstimate:
    rows = [video_row_count(item.split, opts.clips, views.count, opts.test_views) for item in items]
    return estimate_size(out, layout, opts.frames, rows, opts.shard_size_mb, opts.clips)


def _catalogue(
    videos: str | Path | None,
    out: str | Path,
    annotations: str | Path | None,
    items: Sequence[VideoItem] | None,
    opts: ExtractOptions,
) -> tuple[str | Path | None, Path, list[VideoItem], list[str], ViewSettings]:
    """The videos root, the output directory (a part's, with ``num_parts``), this part's items, the classes of the
    whole catalogue and the views asked for."""
    resolve_backbone(opts.backbone)  # a typo in the name should fail before any scanning or decoding
    if annotations is not None and videos is None:
        videos = Path(annotations).parent  # paths in an annotation CSV are relative to the videos root
    if items is None:
        if annotations is not None:
            items = read_annotations(annotations, videos, allow_outside=opts.allow_outside)
        elif videos is not None:
            items = discover_videos(videos)
        else:
            raise ExtractionError("give a videos directory, an annotations CSV, or items")
    items = list(items)
    classes = class_names(items)  # from the whole catalogue, so that every part has the same class list
    views = view_settings(opts, classes)
    out = Path(out)
    if opts.num_parts > 1:
        items = partition(items, opts.num_parts, opts.part)
        out = part_directory(out, opts.part, opts.num_parts)
    return videos, out, items, classes, views


def view_settings(opts: ExtractOptions, classes: list[str]) -> ViewSettings:
    """The augmented views asked for; flip pairs are checked against the catalogue's classes."""
    pairs = tuple(read_pairs(opts.flip_pairs, classes)) if opts.flip_pairs else ()
    views = ViewSettings(
        opts.views, tuple(opts.view_scale), tuple(opts.view_ratio), opts.view_span, opts.view_colour,
        opts.view_flip, pairs, opts.view_seed,
    )  # fmt: skip
    on_device = getattr(DECODERS.get(opts.decoder), "on_device", False)
    if views.count and on_device:
        raise ExtractionError(
            f"{option('views')} is not supported with {option('decoder', opts.decoder)} yet; use a CPU decoder"
        )
    if opts.test_views is not None and opts.test_views.crops > 1 and on_device:
        raise ExtractionError(
            f"{option('test_views')} with several crops is not supported with {option('decoder', opts.decoder)} yet;"
            " use a CPU decoder"
        )
    return views


def extraction_settings(backbone: Backbone, opts: ExtractOptions, views: ViewSettings | None = None) -> dict[str, Any]:
    """The settings that define the tokens; a resumed run must match them exactly (JSON-normalised)."""
    # Where a weights file lies is not part of its identity (its checksum is): moving it must not block a resume.
    weights = {k: v for k, v in backbone.weights.items() if k != "path"}
    settings = {
        "backbone": backbone.info(),
        "weights": weights,
        "preprocessing": backbone.preprocessing.to_dict(),
        "sampling": sampling_record(opts.frames, opts.clips, opts.frame_step),
        "tokens": backbone.layout.to_dict(),
        **decoder_settings(opts.decoder),
        **({"views": views.to_dict()} if views is not None and views.count else {}),  # absent: byte-identical
        **({"test_views": opts.test_views.to_dict()} if opts.test_views is not None else {}),  # absent: as before
    }
    return json.loads(json.dumps(settings))


def _pairs_beside(annotations: str | Path | None) -> Path | None:
    if annotations is None:
        return None
    candidate = Path(annotations).with_name("pairs.txt")
    return candidate if candidate.is_file() else None


def _default_workers(device_type: str) -> int:
    # from the thread budget (affinity, CPU quota, --threads), not the host's core count
    return worker_count(32, spare=0) if device_type == "cuda" else worker_count(8)


__all__ = [
    "ExtractOptions",
    "ExtractReport",
    "ExtractionError",
    "SizeEstimate",
    "extract",
    "extraction_settings",
    "plan_extract",
    "view_settings",
]
