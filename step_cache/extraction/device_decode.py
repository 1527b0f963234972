"""Decoding on the GPU (``--decoder torchcodec-cuda``): frames stay on the device from the decoder to the backbone.

A CPU decoder needs many processes (one video per core) and ships resized uint8 frames to the backbone through
pipes and pinned memory. A GPU decoder (NVDEC) is one piece of hardware shared by the whole process, its frames
are CUDA tensors that must not leave the device, and a CUDA context cannot be shared with forked or spawned
workers cheaply. So the GPU path has no process pool: one thread in the extracting process opens each video with
torchcodec on the device, samples its frames, resizes and crops them there with torch (device_preprocess.py), and
hands (N, 3, S, S) uint8 device tensors to the batcher, a few videos ahead of the backbone. Normalisation then
runs on the device as on the CPU path. ``--workers`` does not apply.

What this path gives up: a decoder that crashes the process (a segfault) stops the run, where a CPU worker's
crash fails one video (re-running the command resumes after the videos done), and there is no per-video
time limit.

UNTESTED ON A GPU: no GPU was lent while this was written. The same code runs in the tests on the CPU (torchcodec
decoding on the CPU device, torch resizing CPU tensors), which checks everything but NVDEC itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from step_cache.errors import StepCacheError
from step_cache.extraction.decode_pool import DecodePool, DecodeResult, DecodeTask, guarded_decode
from step_cache.extraction.decoders import decoder_spec
from step_cache.extraction.device_preprocess import check_device_preprocessing, resize_and_crop_tensor
from step_cache.extraction.preprocess import Preprocessing
from step_cache.extraction.video import decode_clips_on_device
from step_cache.interface import option

DEVICE_TYPES = ("cuda",)  # where an on-device decoder may run (the tests add "cpu" to run this path on the CPU)


class DeviceDecodeError(StepCacheError, ValueError):
    """An on-device decoder asked for where it cannot run (no CUDA device, or a resize torch cannot reproduce)."""


def decode_on_device(
    task: DecodeTask, frames: int, clips: int, preprocessing: Preprocessing, decoder: str, device: torch.device
) -> DecodeResult:
    """Decode, sample, resize and crop one video on ``device``; any error is returned as a failure naming the file."""

    def decode() -> tuple[Any, torch.Tensor]:
        decoded = decode_clips_on_device(
            task.path, frames, task.segments or clips, task.start_frame, task.end_frame, decoder, str(device),
            task.frame_step,
        )  # fmt: skip
        return decoded, resize_and_crop_tensor(preprocessing, decoded.frames)

    return guarded_decode(task, decode)


class DeviceDecodePool:
    """DecodePool's interface (start, run, close) for a decoder on ``device``: one decoding thread, ``prefetch``
    videos ahead, results in task order; their ``frames`` are device tensors."""

    def __init__(self, decoder: str, device: torch.device, frames: int, clips: int, prefetch: int = 4):
        if device.type not in DEVICE_TYPES:
            raise DeviceDecodeError(
                f"the {decoder} decoder decodes on a CUDA GPU, but extraction runs on {device}: use "
                f"{option('device', 'cuda')}, or a CPU decoder ({option('decoder', 'decord')})"
            )
        self.decoder, self.device = decoder, device
        self.frames, self.clips = frames, clips
        self.prefetch = max(1, prefetch)
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> DeviceDecodePool:
        decoder_spec(self.decoder)  # a missing torchcodec fails now, in one line
        return self

    def run(self, tasks: Iterable[DecodeTask], preprocessing: Preprocessing) -> Iterator[DecodeResult]:
        check_device_preprocessing(preprocessing)
        # One thread: NVDEC decodes in hardware, so more host threads mostly contend for the one decoder; the thread
        # lets demuxing and the next video's decode overlap the backbone's kernels on the main thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device-decode")
        in_flight: deque[Future] = deque()
        pending = iter(tasks)
        try:
            while True:
                while len(in_flight) < self.prefetch and (task := next(pending, None)) is not None:
                    in_flight.append(
                        self._executor.submit(
                            decode_on_device, task, self.frames, self.clips, preprocessing, self.decoder, self.device
                        )
                    )
                if not in_flight:
                    return
                yield in_flight.popleft().result()
        finally:
            self.close()

    def close(self, wait: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait, cancel_futures=True)
            self._executor = None


def open_decode_pool(
    decoder: str, device: torch.device, workers: int, frames: int, clips: int, timeout: float
) -> DecodePool | DeviceDecodePool:
    """The decode pool for ``decoder``: worker processes for a CPU decoder, one thread on the device for a GPU one."""
    if decoder_spec(decoder).on_device:
        return DeviceDecodePool(decoder, device, frames, clips).start()
    return DecodePool(workers, frames, clips, timeout=timeout, decoder=decoder).start()
