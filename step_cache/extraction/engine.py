"""Stage one: run a frozen backbone over videos once and store per-frame tokens in crash-safe shards.

Pipeline: catalogue -> decode workers (parallel processes) -> frame batches on the device -> shard writer.
A run into an existing directory resumes: videos already in completed shards are skipped, a half-written shard
is discarded, and the extraction settings must match the manifest's (``overwrite=True`` starts over).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from step_cache.cache.disk_space import DiskFullError, check_not_full, disk_full_message, is_disk_full
from step_cache.cache.locking import DirectoryLock
from step_cache.cache.manifest import Failure, Manifest, VideoWarning
from step_cache.cache.quantize import TOKEN_DTYPES, read_dtype
from step_cache.cache.shards import COMPRESSIONS
from step_cache.cache.writer import CacheWriter, ExtractionError, next_shard_index, open_output, recover
from step_cache.catalog import VideoItem, class_names, discover_videos, read_annotations, read_pairs
from step_cache.cpu_budget import worker_count
from step_cache.devices import resolve_device
from step_cache.extraction.backbones import Backbone, load_backbone, resolve_backbone
from step_cache.extraction.decode_pool import DecodePool, DecodeTask
from step_cache.extraction.decoders import DECODERS, DEFAULT_DECODER, decoder_settings
from step_cache.extraction.device_decode import open_decode_pool
from step_cache.extraction.extract_report import ExtractReport
from step_cache.extraction.frame_batches import FrameBatcher, PendingVideo, TokenComputer
from step_cache.extraction.parts import part_directory, partition
from step_cache.extraction.quick_check import already_complete, quick_check, request_record
from step_cache.extraction.video_rows import video_records
from step_cache.extraction.views import DEFAULT_RATIO, DEFAULT_SCALE, ViewSettings, gets_views
from step_cache.stopping import raise_if_stopping

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

    def __post_init__(self) -> None:
        if self.frames < 1 or self.clips < 1:
            raise ExtractionError(f"frames and clips must be >= 1 (got frames={self.frames}, clips={self.clips})")
        if self.dtype not in TOKEN_DTYPES:
            raise ExtractionError(f"dtype must be one of {', '.join(TOKEN_DTYPES)}, got {self.dtype!r}")
        if self.shard_size_mb <= 0:
            raise ExtractionError(f"shard size must be positive, got {self.shard_size_mb} MB")
        if self.compression not in COMPRESSIONS:
            raise ExtractionError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")


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
    out = Path(out)
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
    pairs_file = Path(pairs) if pairs else _pairs_beside(annotations)
    pair_list = read_pairs(pairs_file, classes) if pairs_file else []
    views = view_settings(opts, classes)
    if opts.num_parts > 1:
        items = partition(items, opts.num_parts, opts.part)
        out = part_directory(out, opts.part, opts.num_parts)
    # A no-op re-run or a settings mismatch is answered now, before the backbone and the decode workers (seconds)
    if not opts.overwrite and (finished := quick_check(out, opts, views, classes, pair_list, videos, items)):
        return finished

    device = resolve_device(opts.device)
    workers = _default_workers(device.type) if opts.workers is None else opts.workers
    # Decode workers take a moment to start: spawn them now, ready once the backbone is loaded (a bad --decoder fails)
    pool = open_decode_pool(opts.decoder, device, workers, opts.frames, opts.clips, opts.decode_timeout)
    try:
        backbone = load_backbone(
            opts.backbone, opts.weights, opts.image_size, opts.pool_patches, seed=opts.seed, dtype=opts.dtype
        )
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
        try:
            with DirectoryLock(out) as lock:
                if lock.replaced_stale:
                    log.warning("%s: took over a stale lock left by pid %s", out, lock.replaced_stale.get("pid"))
                manifest = open_output(out, extraction, classes, pair_list, source, opts.overwrite)
                manifest.storage = {"compression": opts.compression}
                done = recover(out, manifest)
                return _run(backbone, opts, out, manifest, items, done, videos, device, pool, views)
        except OSError as error:  # full before the first video (its lock or manifest): nothing was written
            if is_disk_full(error) and not isinstance(error, DiskFullError):
                raise ExtractionError(disk_full_message(out, "extraction", 0)) from None
            raise
    except BaseException:
        pool.close(
            wait=False
        )  # stopping (an error, a full disk, a signal): the videos queued to workers are not wanted
        raise
    finally:
        pool.close()


def view_settings(opts: ExtractOptions, classes: list[str]) -> ViewSettings:
    """The augmented views asked for; flip pairs are checked against the catalogue's classes."""
    pairs = tuple(read_pairs(opts.flip_pairs, classes)) if opts.flip_pairs else ()
    views = ViewSettings(
        opts.views, tuple(opts.view_scale), tuple(opts.view_ratio), opts.view_span, opts.view_colour,
        opts.view_flip, pairs, opts.view_seed,
    )  # fmt: skip
    if views.count and getattr(DECODERS.get(opts.decoder), "on_device", False):
        raise ExtractionError(f"--views is not supported with --decoder {opts.decoder} yet; use a CPU decoder")
    return views


def extraction_settings(backbone: Backbone, opts: ExtractOptions, views: ViewSettings | None = None) -> dict[str, Any]:
    """The settings that define the tokens; a resumed run must match them exactly (JSON-normalised)."""
    # Where a weights file lies is not part of its identity (its checksum is): moving it must not block a resume.
    weights = {k: v for k, v in backbone.weights.items() if k != "path"}
    settings = {
        "backbone": backbone.info(),
        "weights": weights,
        "preprocessing": backbone.preprocessing.to_dict(),
        "sampling": {"frames": opts.frames, "clips": opts.clips, "strategy": "segment-centres"},
        "tokens": backbone.layout.to_dict(),
        **decoder_settings(opts.decoder),
        **({"views": views.to_dict()} if views is not None and views.count else {}),  # absent: byte-identical
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


def _run(
    backbone: Backbone,
    opts: ExtractOptions,
    out: Path,
    manifest: Manifest,
    items: list[VideoItem],
    done: set[str],
    videos_root: str | Path | None,
    device: torch.device,
    pool: DecodePool,
    views: ViewSettings,
) -> ExtractReport:
    report = ExtractReport(out=out, manifest=manifest, skipped=sum(item.key in done for item in items))
    todo = [item for item in items if item.key not in done]
    failures = {f.video: f for f in manifest.failures if f.video not in done}
    # warnings of videos in the cache; a video extracted again gets its own
    warnings = {w.video: w for w in manifest.warnings if w.video in done}
    manifest.warnings = sorted(warnings.values(), key=lambda w: w.video)
    label_index = {name: i for i, name in enumerate(manifest.classes)}
    swap = views.swap_map()
    layout = backbone.layout
    shard_clips = max(opts.clips, int(opts.shard_size_mb * 2**20 // layout.clip_bytes(opts.frames)))
    # int8: the backbone's tokens come back in float16 and the shard writer quantizes them (as compact would)
    computer = TokenComputer(backbone, device, read_dtype(opts.dtype).name, compile_model=opts.compile)
    batcher = FrameBatcher(opts.batch_size or (256 if device.type == "cuda" else 32), computer)
    tasks = [
        DecodeTask(
            i,
            str(Path(videos_root) / item.path) if videos_root is not None else item.path,
            item.start_frame,
            item.end_frame,
            key=item.key,
            views=views if views.count and gets_views(item.split) else None,
        )
        for i, item in enumerate(todo)
    ]
    per_video = [opts.clips * (1 + (views.count if task.views is not None else 0)) for task in tasks]
    state = CacheWriter(
        out, manifest, layout, opts.frames, next_shard_index(manifest), shard_clips, opts.compression,
        expected_clips=sum(per_video), video_clips=max(per_video, default=opts.clips),
    )  # fmt: skip
    started = time.perf_counter()
    bar = tqdm(total=len(todo), unit="video", desc=f"extract {backbone.spec.name}", disable=not opts.progress)

    def write_finished(finished: list[PendingVideo]) -> None:
        for video in finished:
            item, result = video.payload
            # whole videos only: the clean clips and all views go into one shard together (crash safety)
            records = video_records(video.tokens, item, result, label_index, opts.clips, opts.frames, swap)
            state.append_video(records)
            failures.pop(item.key, None)
            if result.fps:  # the typical duration is timeline's default window
                manifest.add_duration(result.num_frames / result.fps)
            if result.warnings:  # recorded in the manifest (and shown by inspect) with the video's shard
                warning = VideoWarning(item.key, f"{item.key}: {'; '.join(result.warnings)}", result.decode_errors)
                log.warning("%s", warning.reason)
                warnings[item.key] = warning
                report.warnings.append(warning)
                manifest.warnings = sorted(warnings.values(), key=lambda w: w.video)
            report.videos += 1
            report.clips += opts.clips
            report.view_clips += len(records) - opts.clips
            bar.update(1)
            elapsed = time.perf_counter() - started
            bar.set_postfix(frames_s=f"{batcher.frames_done / elapsed:.1f}", failed=len(report.failures))
            state.roll_over_if_full(failures)

    try:
        for result in pool.run(tasks, backbone.preprocessing):
            raise_if_stopping()  # a Ctrl-C or SIGTERM swallowed somewhere stops the run at the next video
            check_not_full(out)  # another writer may fill the disk: stop now, not when this shard is done
            item = todo[result.task_id]
            if result.error is not None:
                failure = Failure(item.key, result.error)
                failures[item.key] = failure
                report.failures.append(failure)
                bar.update(1)
                log.warning("skipped %s", result.error)
                if opts.strict:
                    write_finished(batcher.flush())
                    raise ExtractionError(f"--strict: {result.error}")
                continue
            if result.decode_errors and (opts.strict or result.decode_errors > opts.max_decode_errors):
                reason = f"{tasks[result.task_id].path}: {result.warnings[-1]}"
                if opts.strict:
                    write_finished(batcher.flush())
                    raise ExtractionError(f"--strict: {reason}")
                failure = Failure(item.key, f"{reason} (more than --max-decode-errors {opts.max_decode_errors})")
                failures[item.key] = failure
                report.failures.append(failure)
                bar.update(1)
                log.warning("skipped %s", failure.reason)
                continue
            write_finished(batcher.add(PendingVideo(payload=(item, result), frames=result.take_frames())))
        write_finished(batcher.flush())
        manifest.source["finished"] = True
        state.finish(failures)
    except KeyboardInterrupt:
        state.finish(failures)  # publishes whole videos only: clips of a video cut short are dropped
        raise
    except ExtractionError:
        state.finish(failures)
        raise
    except Exception as error:
        if is_disk_full(error):  # one line, the shards kept; never HDF5's tracebacks (disk_space)
            raise ExtractionError(state.stop_on_full_disk(failures)) from None
        state.abandon(failures)
        raise ExtractionError(
            f"{out}: extraction stopped by {type(error).__name__}: {error}; completed shards are kept, "
            "re-run the same command to resume"
        ) from error
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    if report.failures and manifest.num_videos == 0:  # the run was for nothing: say so, and exit non-zero
        raise ExtractionError(
            f"none of the {len(report.failures)} videos could be extracted (first: {report.failures[0].reason}); "
            f"all are recorded in {out / 'manifest.json'}"
        )
    report.frames = batcher.frames_done
    return report


__all__ = ["ExtractOptions", "ExtractReport", "ExtractionError", "extract", "extraction_settings", "view_settings"]
