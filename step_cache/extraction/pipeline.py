"""Stage one's pipeline, step by step: decode workers -> frame batches on the device -> a writer thread -> shards.

``ExtractionRun`` holds a run's state and names its steps: ``decode_tasks`` (what the workers decode),
``compute`` (the main thread: decoded videos into backbone batches), ``write_video`` and ``record_failure``
(the writer thread: clips into the shard, bookkeeping into the manifest and the report) and ``finish`` /
``stop`` (publish whole videos only, whatever ended the run). Everything that touches the manifest, the failures
or the report runs in the writer thread, in the order the main thread queued it, so the cache sees the same
sequence of writes as a single-threaded run; the main thread only decodes, batches and queues.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from step_cache.cache.disk_space import check_not_full, is_disk_full
from step_cache.cache.manifest import Failure, Manifest, VideoWarning
from step_cache.cache.quantize import read_dtype
from step_cache.cache.writer import CacheWriter, ExtractionError, next_shard_index
from step_cache.catalog import VideoItem
from step_cache.extraction.backbones import Backbone
from step_cache.extraction.decode_pool import DecodePool, DecodeResult, DecodeTask
from step_cache.extraction.device_quantize import unpack
from step_cache.extraction.extract_report import ExtractReport
from step_cache.extraction.frame_batches import FrameBatcher, PendingVideo, TokenComputer
from step_cache.extraction.test_views import TestViews, gets_test_views
from step_cache.extraction.video_rows import video_records
from step_cache.extraction.views import ViewSettings, gets_views
from step_cache.extraction.write_queue import WriteQueue
from step_cache.interface import from_command_line, option
from step_cache.stopping import raise_if_stopping

log = logging.getLogger(__name__)


class ExtractionRun:
    """One run of ``extract`` over the items not yet in the cache (``done`` lists those that are)."""

    def __init__(
        self,
        backbone: Backbone,
        opts: Any,  # engine.ExtractOptions
        out: Path,
        manifest: Manifest,
        items: list[VideoItem],
        done: set[str],
        device: torch.device,
        views: ViewSettings,
    ) -> None:
        self.opts, self.out, self.manifest, self.views = opts, out, manifest, views
        self.report = ExtractReport(out=out, manifest=manifest, skipped=sum(item.key in done for item in items))
        self.todo = [item for item in items if item.key not in done]
        self.failures = {f.video: f for f in manifest.failures if f.video not in done}
        # warnings of videos in the cache; a video extracted again gets its own
        self.warnings = {w.video: w for w in manifest.warnings if w.video in done}
        manifest.warnings = sorted(self.warnings.values(), key=lambda w: w.video)
        self.label_index = {name: i for i, name in enumerate(manifest.classes)}
        self.swap = views.swap_map()
        layout = backbone.layout
        shard_clips = max(opts.clips, int(opts.shard_size_mb * 2**20 // layout.clip_bytes(opts.frames)))
        # int8: the backbone's float16 tokens are quantized where quantize_on_device says (the same values either way)
        computer = TokenComputer(
            backbone, device, read_dtype(opts.dtype).name, compile_model=opts.compile,
            quantize=quantize_on_device(opts.dtype, device),
        )  # fmt: skip
        self.batcher = FrameBatcher(opts.batch_size or (256 if device.type == "cuda" else 32), computer)
        # clips per video (views included): the writer reserves their bytes so a full disk stops between videos
        per_video = [self.rows_of(item) for item in self.todo]
        self.state = CacheWriter(
            out, manifest, layout, opts.frames, next_shard_index(manifest), shard_clips, opts.compression,
            expected_clips=sum(per_video), video_clips=max(per_video, default=opts.clips),
        )  # fmt: skip
        self.name = backbone.spec.name
        self.started = time.perf_counter()
        self.bar: tqdm | None = None

    def rows_of(self, item: VideoItem) -> int:
        """Shard rows of one video (``video_row_count``)."""
        return video_row_count(item.split, self.opts.clips, self.views.count, self.opts.test_views)

    def decode_tasks(self, videos_root: str | Path | None) -> list[DecodeTask]:
        """What the decode workers do: one task per video to extract (its augmented or test views with it)."""
        views, test_views = self.views, self.opts.test_views
        tasks = []
        for i, item in enumerate(self.todo):
            tested = test_views is not None and gets_test_views(item.split)
            tasks.append(
                DecodeTask(
                    i,
                    str(Path(videos_root) / item.path) if videos_root is not None else item.path,
                    item.start_frame,
                    item.end_frame,
                    key=item.key,
                    views=views if views.count and gets_views(item.split) else None,
                    segments=test_views.segments if tested else None,
                    crops=test_views.crops if tested else 1,
                    frame_step=self.opts.frame_step,
                )
            )
        return tasks

    # -- the writer thread -------------------------------------------------------------------------------
    def write_video(self, video: PendingVideo) -> None:
        """A video's clips (and views) into the shard, all together (crash safety), and its bookkeeping."""
        item, result = video.payload
        opts, report = self.opts, self.report
        tokens, scales = unpack(video.tokens) if video.tokens.dtype == np.int8 else (video.tokens, None)
        records = video_records(tokens, item, result, self.label_index, opts.clips, opts.frames, self.swap, scales)
        self.state.append_video(records)
        self.failures.pop(item.key, None)
        if result.fps:  # the typical duration is timeline's default window
            self.manifest.add_duration(result.num_frames / result.fps)
        if result.warnings:  # recorded in the manifest (and shown by inspect) with the video's shard
            warning = VideoWarning(item.key, f"{item.key}: {'; '.join(result.warnings)}", result.decode_errors)
            log.warning("%s", warning.reason)
            self.warnings[item.key] = warning
            report.warnings.append(warning)
            self.manifest.warnings = sorted(self.warnings.values(), key=lambda w: w.video)
        if result.short:
            report.short.append(item.key)
        report.videos += 1
        clean = sum(record.view == 0 for record in records)
        report.clips += clean
        report.view_clips += len(records) - clean
        self._progress()
        self.state.roll_over_if_full(self.failures)  # publishing (fsync, sha256) happens here, off the hot path

    def record_failure(self, item: VideoItem, reason: str) -> None:
        failure = Failure(item.key, reason)
        self.failures[item.key] = failure
        self.report.failures.append(failure)
        log.warning("skipped %s", reason)
        self._progress()

    def _handle(self, entry: tuple[str, Any]) -> None:
        kind, payload = entry
        if kind == "video":
            self.write_video(payload)
        else:
            self.record_failure(*payload)

    def _progress(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            elapsed = time.perf_counter() - self.started
            # failed= counts this run's "skipped" lines, not failures recorded by earlier runs
            self.bar.set_postfix(frames_s=f"{self.batcher.frames_done / elapsed:.1f}", failed=len(self.report.failures))

    # -- the main thread ---------------------------------------------------------------------------------
    def compute(self, pool: DecodePool, tasks: list[DecodeTask], writes: WriteQueue) -> None:
        """Decoded videos into backbone batches; finished videos and failures to the writer, in order."""
        preprocessing = self.batcher.compute.backbone.preprocessing
        opts = self.opts
        for result in pool.run(tasks, preprocessing):
            raise_if_stopping()  # a Ctrl-C or SIGTERM swallowed somewhere stops the run at the next video
            check_not_full(self.out)  # another writer may fill the disk: stop now, not when this shard is done
            item = self.todo[result.task_id]
            if result.error is not None:
                writes.put(("failure", (item, result.error)))
                if opts.strict:
                    self._queue(self.batcher.flush(), writes)
                    raise strict_stop(result.error)
                continue
            if result.decode_errors and (opts.strict or result.decode_errors > opts.max_decode_errors):
                reason = f"{tasks[result.task_id].path}: {result.warnings[-1]}"
                if opts.strict:
                    self._queue(self.batcher.flush(), writes)
                    raise strict_stop(reason)
                limit = f"more than {option('max_decode_errors', opts.max_decode_errors)}"
                writes.put(("failure", (item, f"{reason} ({limit})")))
                continue
            self._queue(self.batcher.add(self._pending(item, result)), writes)
        self._queue(self.batcher.flush(), writes)

    @staticmethod
    def _pending(item: VideoItem, result: DecodeResult) -> PendingVideo:
        return PendingVideo(payload=(item, result), frames=result.take_frames())

    @staticmethod
    def _queue(finished: list[PendingVideo], writes: WriteQueue) -> None:
        for video in finished:
            writes.put(("video", video))

    def run(self, pool: DecodePool, videos_root: str | Path | None) -> ExtractReport:
        """Extract every video to do; whole videos are published whatever stops the run."""
        tasks = self.decode_tasks(videos_root)
        self.bar = tqdm(total=len(self.todo), unit="video", desc=f"extract {self.name}", disable=not self.opts.progress)
        writes = WriteQueue(self._handle)
        try:
            self.compute(pool, tasks, writes)
            writes.close()  # everything queued is written
            self.manifest.source["finished"] = True
            self.state.finish(self.failures)
        except (KeyboardInterrupt, ExtractionError):
            self.finish(writes)  # publishes whole videos only: clips of a video cut short are dropped
            raise
        except Exception as error:
            if is_disk_full(error):  # one line, the whole videos kept; never HDF5's tracebacks (disk_space)
                self.close_quietly(writes)
                raise ExtractionError(self.state.stop_on_full_disk(self.failures)) from None
            self.stop(writes)
            raise ExtractionError(
                f"{self.out}: extraction stopped by {type(error).__name__}: {error}; completed shards are kept, "
                "re-run the same command to resume"
            ) from error
        finally:
            self.bar.close()
        return self.summary()

    def finish(self, writes: WriteQueue) -> None:
        """An interrupt or a refusal: write the videos already computed, then publish the shard."""
        try:
            writes.close()
        finally:
            self.state.finish(self.failures)

    def stop(self, writes: WriteQueue) -> None:
        """An error (in the pipeline or the writer): the unfinished shard is dropped, the manifest kept valid."""
        self.close_quietly(writes)
        self.state.abandon(self.failures)

    @staticmethod
    def close_quietly(writes: WriteQueue) -> None:
        """Stop the writer thread; its own error, if any, is already the reason the run stops."""
        try:
            writes.close()
        except Exception as error:  # noqa: BLE001 - the writer's own error, already the reason we stop
            log.debug("writer stopped: %s", error)

    def summary(self) -> ExtractReport:
        report = self.report
        report.seconds = time.perf_counter() - self.started
        if report.failures and self.manifest.num_videos == 0:  # the run was for nothing: say so, exit non-zero
            raise ExtractionError(
                f"none of the {len(report.failures)} videos could be extracted (first: {report.failures[0].reason}); "
                f"all are recorded in {self.out / 'manifest.json'}"
            )
        report.frames = self.batcher.frames_done
        return report


def quantize_on_device(dtype: str, device: torch.device) -> bool:
    """Whether int8 tokens are quantized on the device before the copy back (``device_quantize``: half the bytes over
    PCIe) rather than by the shard writer's numpy quantizer in the writer thread. Only on a GPU: on the CPU there is
    no copy to save, and torch's quantizer there (measured 2x numpy's time, docs/performance.md) would run on the
    main thread, beside the backbone, instead of the writer thread."""
    return dtype == "int8" and device.type == "cuda"


def strict_stop(reason: str) -> ExtractionError:
    """The stop that ``strict`` asks for at the first failed video, naming the setting as the caller wrote it."""
    setting = "--strict" if from_command_line() else "strict=True"
    return ExtractionError(f"stopped at the first failed video ({setting}): {reason}")


__all__ = ["ExtractionRun", "strict_stop"]


def video_row_count(split: str | None, clips: int, views: int, test_views: TestViews | None) -> int:
    """Shard rows of one video of ``split``: K clips, times 1 + N views for a training video, or the test views'
    S x C for a val/test video (also what ``extract --dry-run`` counts)."""
    if test_views is not None and gets_test_views(split):
        return test_views.rows
    return clips * (1 + (views if views and gets_views(split) else 0))
