"""Parallel video decoding in worker processes that survive bad files.

Each worker decodes, samples and resizes/crops one video at a time and ships uint8 frames back. A Python error
becomes a per-video failure; a decoder that crashes the whole process (segfault) or hangs is detected, its video
recorded as failed, its other queued videos handed to a fresh worker, and the run goes on.
Workers of the decord and PyAV decoders import only numpy, PIL, decord and PyAV (no torch), so they start fast
with the ``spawn`` method, which is safe next to a parent that already runs torch threads; torchcodec's import
torch (a second or two more per worker start). A GPU decoder does not use this pool (see gpu_decode.py).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from step_cache.errors import StepCacheError
from step_cache.extraction.decoder_errors import counting_decoder_errors
from step_cache.extraction.decoders import DEFAULT_DECODER, decoder_spec
from step_cache.extraction.preprocess import Preprocessing
from step_cache.extraction.test_views import square_side, view_pixels
from step_cache.extraction.video import VideoDecodeError, decode_clips, quiet_decoder_logs
from step_cache.extraction.views import ViewSettings, render_views, view_sampler
from step_cache.stopping import deferred, raise_if_stopping


@dataclass(frozen=True)
class DecodeTask:
    task_id: int
    path: str
    start_frame: int | None
    end_frame: int | None
    key: str = ""  # the video's catalogue key: seeds its augmented views
    views: ViewSettings | None = None  # draw augmented views of this (training) video
    segments: int | None = None  # test views (a val/test video): this many temporal clips instead of --clips ...
    crops: int = 1  # ... and this many spatial crops of each (test_views.py)
    frame_step: int | None = None  # T frames this far apart per clip (sampling.frame_step_indices)


@dataclass
class DecodeResult:
    task_id: int
    frames: np.ndarray | None = None  # (clips * T, 3, S, S) uint8, ready for normalisation (a tensor: device_decode)
    frame_indices: np.ndarray | None = None  # (clips, T)
    num_frames: int = 0
    short: bool = False
    error: str | None = None
    warnings: tuple[str, ...] = ()  # decoded, but less than asked for (a truncated file, a clamped segment)
    fps: float | None = None  # the container's frame rate: num_frames / fps is the clip's duration
    decode_errors: int = 0  # errors the decoder reported while decoding (damaged data: see decoder_errors)
    view_params: list[dict[str, Any]] = field(default_factory=list)  # views 1..N, their frames after the clean ones
    crops: int = 1  # spatial test views per clip: frames are (clips, crops, T) in that order

    def take_frames(self) -> np.ndarray:
        """Hand the pixels over (to the frame batcher), keeping no reference to them here."""
        frames, self.frames = self.frames, None
        return frames


def decode_task(
    task: DecodeTask, frames: int, clips: int, preprocessing: Preprocessing, decoder: str = DEFAULT_DECODER
) -> DecodeResult:
    """Decode and preprocess one video; any error is returned as a failure naming the file."""

    def decode() -> tuple[Any, Any]:
        sampler = view_sampler(task.views, task.key, frames, clips) if task.views and task.views.count else None
        decoded = decode_clips(
            task.path, frames, task.segments or clips, task.start_frame, task.end_frame, decoder, sampler,
            task.frame_step,
        )  # fmt: skip
        if task.crops > 1:  # the anchor's eval crops along the long side (val/test videos have no augmented views)
            side = square_side(preprocessing.crop_size)
            return decoded, view_pixels(decoded.frames, task.segments or clips, task.crops, side)
        pixels = preprocessing.resize_and_crop(decoded.frames)
        if not decoded.views:
            return decoded, pixels
        # the views' pixels follow the clean ones: the backbone sees them all in one stream of batches
        return decoded, np.concatenate([pixels, *render_views(decoded, task.views, preprocessing)])

    result = guarded_decode(task, decode)
    result.crops = task.crops
    return result


def guarded_decode(task: DecodeTask, decode: Callable[[], tuple[Any, Any]]) -> DecodeResult:
    """The result of ``decode()`` (decoded clips, their preprocessed pixels) for ``task``, or the failure it raised
    (one bad video must never stop the run); shared by the CPU pool and the on-device decoder."""
    try:
        with counting_decoder_errors() as errors:
            decoded, pixels = decode()
    except VideoDecodeError as error:
        return DecodeResult(task.task_id, error=str(error))
    except Exception as error:  # noqa: BLE001 - one bad video must never stop the run
        return DecodeResult(task.task_id, error=f"{task.path}: {type(error).__name__}: {error}")
    damaged = (errors.describe(),) if errors.count else ()
    return DecodeResult(
        task.task_id,
        pixels,
        decoded.frame_indices,
        decoded.num_frames,
        decoded.short,
        warnings=(*decoded.warnings, *damaged),
        fps=decoded.fps,  # for the clip durations in the manifest
        decode_errors=errors.count,
        view_params=[params for _, params, _ in getattr(decoded, "views", [])],
    )


def _worker_main(tasks: mp.Queue, results: Connection, frames: int, clips: int, decoder: str) -> None:
    quiet_decoder_logs()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    if decoder_spec(decoder).requires == "torchcodec":
        import torch

        # torchcodec copies frames with torch ops: intra-op threads in every worker (one per core) spin against each
        # other and the backbone (measured: docs/performance.md, "Video decoders"); workers parallelise already.
        torch.set_num_threads(1)
    # Fault injection for tests: die like a segfaulting decoder on files whose path ends with this text.
    crash_on = os.environ.get("STEP_CACHE_TEST_CRASH_ON")
    parent = os.getppid()
    preprocessing: Preprocessing | None = None  # arrives as the first message, once the backbone is known
    while True:
        try:
            message = tasks.get(timeout=2.0)
        except queue.Empty:
            if os.getppid() != parent:  # the extraction was killed (SIGKILL leaves no time to stop us): quit
                return
            continue
        if message is None:
            return
        if isinstance(message, Preprocessing):
            preprocessing = message
            continue
        if crash_on and message.path.endswith(crash_on):
            os.kill(os.getpid(), signal.SIGSEGV)
        results.send(decode_task(message, frames, clips, preprocessing, decoder))


class DecodeWorkerError(StepCacheError, RuntimeError):
    """Decode workers cannot run at all (they exit before decoding anything), so every video would fail."""


@dataclass
class _Worker:
    process: mp.Process
    tasks: mp.Queue  # only this worker reads it
    results: Connection  # only this worker writes it: a worker that dies mid-write breaks nobody else's pipe
    outstanding: deque  # task ids in the order given; the first one is being decoded now
    started: float  # when the current first task started (for hang detection)
    delivered: int = 0  # results sent back: a worker that exits before its first one never got going


class DecodePool:
    """Decode videos with ``workers`` processes (0: in this process, for debugging), yielding results in task
    order. At most ``prefetch`` videos are queued per worker and a few decoded ones wait for a slower earlier one,
    which bounds memory. The price of the order: a video that hangs holds back every later one until its
    ``timeout`` expires (then it is recorded as failed and the run goes on).

    Each worker has its own task queue and result pipe. A shared result queue would deadlock the whole pool
    when a worker is killed while its feeder thread holds the queue's lock, which a segfault can do at any time.
    """

    def __init__(
        self,
        workers: int,
        frames: int,
        clips: int,
        prefetch: int = 2,
        timeout: float = 600.0,
        decoder: str = DEFAULT_DECODER,
    ):
        self.num_workers = workers
        self.frames, self.clips = frames, clips
        self.decoder = decoder
        self.preprocessing: Preprocessing | None = None
        self.prefetch = max(1, prefetch)
        self.timeout = timeout
        self._context = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._rank: dict[int, int] = {}  # task id -> position in the task order of the current run

    def start(self) -> DecodePool:
        """Spawn the workers now (they take a moment to import), e.g. while the backbone loads."""
        # A stop mid-start would leave a worker's bootstrap without its data (an EOFError traceback): it is
        # raised once the worker is started and listed, so close() ends it.
        while len(self._workers) < self.num_workers:
            with deferred():
                self._workers.append(self._spawn())
        return self

    def run(self, tasks: Iterable[DecodeTask], preprocessing: Preprocessing) -> Iterator[DecodeResult]:
        self.preprocessing = preprocessing
        if self.num_workers <= 0:
            for task in tasks:
                yield decode_task(task, self.frames, self.clips, preprocessing, self.decoder)
            return
        pending = deque(tasks)
        by_id = {task.task_id: task for task in pending}
        # Results are handed out in task order, whichever worker finishes first: then the backbone sees the same
        # batches, and writes the same cache bit for bit, on every run and with any number of workers.
        order = [task.task_id for task in pending]
        self._rank = {task_id: rank for rank, task_id in enumerate(order)}
        position, ready = 0, {}
        max_ahead = 2 * self.prefetch * max(1, self.num_workers)  # decoded videos waiting for an earlier one
        self.start()
        for worker in self._workers:
            worker.tasks.put(preprocessing)
        finished = False
        try:
            while pending or any(worker.outstanding for worker in self._workers):
                raise_if_stopping()  # waiting on slow workers: a stop request still ends the run within 0.5 s
                # ``pending`` stays in task order (requeued tasks are sorted back in), so the task to hand out
                # next is either with a worker or first in line: never hold that one back.
                head_waiting = bool(pending) and position < len(order) and pending[0].task_id == order[position]
                if len(ready) < max_ahead or head_waiting:
                    self._dispatch(pending)
                busy = {worker.results: worker for worker in self._workers if worker.outstanding}
                for connection in wait(list(busy), timeout=0.5):
                    for result in self._receive(busy[connection], limit=1):
                        ready[result.task_id] = result
                for result in self._check_workers(pending, by_id):
                    ready[result.task_id] = result
                while position < len(order) and order[position] in ready:
                    yield ready.pop(order[position])
                    position += 1
            finished = True
        finally:
            self.close(wait=finished)  # a caller that stops early (an error, a signal) wants no more videos

    def _spawn(self) -> _Worker:
        tasks = self._context.Queue()
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(tasks, writer, self.frames, self.clips, self.decoder),
            daemon=True,
        )
        process.start()
        if self.preprocessing is not None:  # a replacement for a crashed worker, mid-run
            tasks.put(self.preprocessing)
        writer.close()  # the worker holds the only write end, so its death shows as EOF here
        return _Worker(process, tasks, reader, deque(), time.monotonic())

    def _dispatch(self, pending: deque) -> None:
        for worker in self._workers:
            while pending and len(worker.outstanding) < self.prefetch:
                task = pending.popleft()
                if not worker.outstanding:
                    worker.started = time.monotonic()
                worker.outstanding.append(task.task_id)
                worker.tasks.put(task)

    @staticmethod
    def _receive(worker: _Worker, limit: int | None = None) -> list[DecodeResult]:
        """Results the worker has already sent (at most ``limit``), oldest first."""
        results: list[DecodeResult] = []
        while worker.outstanding and (limit is None or len(results) < limit) and worker.results.poll():
            try:
                results.append(worker.results.recv())
            except Exception:  # noqa: BLE001 - EOF or a torn message: the worker died, see _check_workers
                break
            worker.outstanding.popleft()
            worker.started = time.monotonic()
            worker.delivered += 1
        return results

    def _check_workers(self, pending: deque, by_id: dict[int, DecodeTask]) -> list[DecodeResult]:
        """Replace dead or hung workers: results they sent before dying still count, the video they were on
        fails, the ones queued behind it go back to the queue."""
        results = []
        for index, worker in enumerate(self._workers):
            dead = not worker.process.is_alive()
            hung = bool(worker.outstanding) and time.monotonic() - worker.started > self.timeout
            if not (dead or hung):
                continue
            if hung:
                worker.process.kill()
            worker.process.join(timeout=5)
            # A worker can send one video's result and crash on the next before we read it: keep the result,
            # and blame only the video it was decoding.
            results.extend(self._receive(worker))
            if not hung and worker.delivered == 0 and worker.process.exitcode == 1:
                # Exit code 1 is a Python error outside decode_task (which turns every error into a failure), i.e.
                # at start-up: the same would happen to every worker, so stop instead of failing video by video.
                raise DecodeWorkerError(
                    "a decode worker process exited (code 1) before decoding any video; its error is printed "
                    "above. If you call step_cache.extract from a script, put the call under "
                    "`if __name__ == '__main__':` (workers start with 'spawn' and import your script)"
                )
            if worker.outstanding:
                culprit = by_id[worker.outstanding.popleft()]
                reason = (
                    f"decoding took longer than {self.timeout:.0f} s"
                    if hung
                    else f"the decoder crashed (worker exit code {worker.process.exitcode})"
                )
                results.append(DecodeResult(culprit.task_id, error=f"{culprit.path}: {reason}"))
                # Videos queued behind the culprit were never started: try them again, in task order, so that
                # the next video to hand out is always first in line (see run).
                requeued = sorted(
                    [*pending, *(by_id[task_id] for task_id in worker.outstanding)],
                    key=lambda task: self._rank[task.task_id],
                )
                pending.clear()
                pending.extend(requeued)
            worker.results.close()
            with deferred():
                self._workers[index] = self._spawn()
        return results

    def close(self, wait: bool = True) -> None:
        """Stop the workers: after the videos queued to them (``wait``), or at once (the run is stopping)."""
        for worker in self._workers:
            if worker.process.is_alive():
                worker.tasks.put(None)
        deadline = time.monotonic() + (5 if wait else 0)
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            worker.results.close()
        self._workers = []
