"""Frames from many videos packed into large batches for the backbone, and tokens scattered back per video.

On CUDA the next batch is launched before the previous one's tokens are copied out (pinned memory,
non-blocking copies, one batch in flight), so host-side work overlaps GPU compute.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from step_cache.extraction.backbones import Backbone
from step_cache.extraction.device_quantize import pack, quantize_tensor
from step_cache.streams import DeviceStreams


@dataclass
class PendingVideo:
    """A decoded video waiting for its tokens; ``tokens`` fills up as its frames come back from the backbone."""

    payload: Any  # whatever the caller needs back (the catalogue item and decode result)
    frames: np.ndarray | torch.Tensor  # (F, 3, S, S) uint8; a device tensor when decoded on the GPU
    tokens: np.ndarray | None = None  # (F, P, D) in the storage dtype; int8 caches: (F, P, D + 2) packed
    submitted: int = 0
    filled: int = 0
    total: int = 0

    def __post_init__(self) -> None:
        self.total = len(self.frames)

    @property
    def complete(self) -> bool:
        return self.filled == self.total


@dataclass
class _Batch:
    spans: list[tuple[PendingVideo, int, int]]  # (video, first frame, last frame + 1)
    output: torch.Tensor  # (B, P, D) on the host, possibly still being copied
    ready: Any = None  # CUDA event marking the end of the copy


class TokenComputer:
    """Runs a frozen ``Backbone`` on uint8 frame batches and returns host tokens in the storage dtype.

    With ``in_flight`` (the default on CUDA) a call only queues the work: frames go up on an upload stream, tokens
    come back into a pinned buffer on a download stream, and the returned event says when they are there, so the
    host batches the next frames meanwhile. On the CPU the same sequence runs synchronously (``streams``' fake);
    ``in_flight=True`` there exercises the batcher's one-batch-in-flight collection without a GPU."""

    def __init__(
        self,
        backbone: Backbone,
        device: torch.device,
        storage_dtype: str,
        compile_model: bool = False,
        in_flight: bool | None = None,
        quantize: bool = False,
    ):
        self.backbone = backbone
        self.device = device
        self.storage_dtype = getattr(torch, storage_dtype)
        # int8 caches: the storage-dtype tokens are quantized on the device and come back packed (device_quantize)
        self.quantize = quantize
        backbone.model.to(device)
        if compile_model:
            backbone.model.forward_features = torch.compile(backbone.model.forward_features, dynamic=False)
        self.cuda = device.type == "cuda"
        self.in_flight = self.cuda if in_flight is None else in_flight
        self.streams = DeviceStreams(device)
        self.upload, self.download = self.streams.new_stream(), self.streams.new_stream()
        # bf16 where the GPU has it (no overflow risk), else fp16; CPU keeps float32 for exact tokens, and so does
        # CUDA when float32 storage is asked for (its point is full precision).
        self.autocast_dtype = None
        if self.cuda and storage_dtype != "float32":
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def __call__(self, frames: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Start computing tokens for (B, 3, S, S) uint8 frames; returns (host tensor, event or None): the event
        (``in_flight`` only) says when the tensor holds the tokens."""
        streams = self.streams
        if isinstance(frames, torch.Tensor):  # decoded on the device already: no host round trip
            batch = frames.to(self.device)
        else:
            with streams.on(self.upload):
                batch = streams.pin(torch.from_numpy(frames)).to(self.device, non_blocking=True)
                uploaded = streams.record(self.upload)
            streams.wait(uploaded)  # the backbone's stream waits for the copy, the host does not
            streams.used_on(batch)
        autocast = (
            torch.autocast(device_type="cuda", dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            pixels = self.backbone.preprocessing.normalise(batch)
            tokens = self.backbone.forward_tokens(pixels).to(self.storage_dtype)
            if self.quantize:
                tokens = pack(*quantize_tensor(tokens))
        if not self.in_flight:
            return tokens, None
        computed = streams.record()
        host = streams.empty_pinned(tokens.shape, tokens.dtype)
        with streams.on(self.download):
            streams.wait(computed, self.download)
            host.copy_(tokens, non_blocking=True)
            streams.used_on(tokens, self.download)
            return host, streams.record(self.download)


class FrameBatcher:
    """Packs frames of queued videos into batches of exactly ``batch_size`` frames (a video may span two
    batches) and hands back videos once all their tokens are in."""

    def __init__(self, batch_size: int, compute: TokenComputer):
        self.batch_size = batch_size
        self.compute = compute
        self.queue: deque[PendingVideo] = deque()
        self.in_flight: _Batch | None = None
        self.frames_done = 0

    def add(self, video: PendingVideo) -> list[PendingVideo]:
        self.queue.append(video)
        finished = []
        while self._queued_frames() >= self.batch_size:
            finished += self._run_batch()
        return finished

    def flush(self) -> list[PendingVideo]:
        finished = []
        while self._queued_frames():
            finished += self._run_batch()
        return finished + self._collect()

    def _queued_frames(self) -> int:
        return sum(len(v.frames) - v.submitted for v in self.queue)

    def _run_batch(self) -> list[PendingVideo]:
        spans, parts, size = [], [], 0
        while self.queue and size < self.batch_size:
            video = self.queue[0]
            take = min(self.batch_size - size, len(video.frames) - video.submitted)
            spans.append((video, video.submitted, video.submitted + take))
            parts.append(video.frames[video.submitted : video.submitted + take])
            video.submitted += take
            size += take
            if video.submitted == len(video.frames):
                self.queue.popleft()
        if len(parts) == 1:
            frames = parts[0]
        else:
            frames = torch.cat(parts) if isinstance(parts[0], torch.Tensor) else np.concatenate(parts)
        output, ready = self.compute(frames)
        # Launch this batch before collecting the previous one: the GPU works while the host scatters.
        finished = self._collect()
        self.in_flight = _Batch(spans, output, ready)
        if ready is None:
            finished += self._collect()
        return finished

    def _collect(self) -> list[PendingVideo]:
        batch, self.in_flight = self.in_flight, None
        if batch is None:
            return []
        if batch.ready is not None:
            batch.ready.synchronize()
        output = batch.output.numpy()
        finished, offset = [], 0
        for video, start, stop in batch.spans:
            if video.tokens is None:
                video.tokens = np.empty((video.total, *output.shape[1:]), dtype=output.dtype)
            video.tokens[start:stop] = output[offset : offset + stop - start]
            offset += stop - start
            video.filled += stop - start
            if video.complete:
                video.frames = video.frames[:0]  # free the pixels now, the tokens are all that is kept
                finished.append(video)
        self.frames_done += offset
        return finished
