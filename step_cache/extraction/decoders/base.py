"""What every video decoder backend provides, and the one error type a bad video gives whatever the backend.

A backend opens a file as a ``VideoSource``: the number of frames it can index, the frame rate, and the frames at
given indices as (N, H, W, 3) uint8 RGB. Frame ``i`` is the i-th frame in presentation order, counted from the
first frame the container presents (decord's indexing): every backend must return the same frames for the same
indices (tests/test_decoders.py checks it on generated and real videos).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from step_cache.errors import StepCacheError


class VideoDecodeError(StepCacheError, RuntimeError):
    """A video that cannot be read; the message names the file and the problem."""


@runtime_checkable
class VideoSource(Protocol):
    """An open video: ``num_frames`` indexable frames, ``fps`` (None when the container does not say)."""

    path: Path
    num_frames: int
    fps: float | None

    def read(self, indices: list[int]) -> np.ndarray:
        """Frames at ``indices`` (unique, ascending, each in [0, num_frames)) as (N, H, W, 3) uint8 RGB.
        VideoDecodeError when the file turns out damaged."""
        ...

    def close(self) -> None: ...


def check_file(path: Path) -> None:
    """The two failures every backend words the same way, before any decoder touches the file."""
    if not path.exists():
        raise VideoDecodeError(f"{path}: file does not exist")
    if path.is_dir():
        raise VideoDecodeError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")


def unopenable(path: Path, error: Exception) -> VideoDecodeError:
    """The error for a file a backend cannot open: 'not a readable video (FFmpeg's reason)', the same words for
    every backend (decord only says 'Error reading FILE...'; FFmpeg's reason is asked of PyAV)."""
    return VideoDecodeError(f"{path}: not a readable video ({_why_unopenable(path, error)})")


def damaged(path: Path, error: Exception | str) -> VideoDecodeError:
    """The error for a file that opened but failed while its frames were decoded."""
    reason = error if isinstance(error, str) else decoder_message(error)
    return VideoDecodeError(f"{path}: decoding failed, the file is damaged ({reason})")


NO_FRAMES = "the video stream holds no readable frame: a damaged or cut-short file"


def _why_unopenable(path: Path, error: Exception) -> str:
    try:
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                return "the file has no video stream"
            if not any(packet.size for packet in container.demux(container.streams.video[0])):
                return NO_FRAMES
    except Exception as probe:  # noqa: BLE001 - av.error.* carry FFmpeg's reason in strerror
        reason = getattr(probe, "strerror", None) or decoder_message(probe)
        return f"{reason[:1].lower()}{reason[1:]}: not a video, or a damaged or cut-short one"
    return f"the decoder cannot open it: {decoder_message(error)}"


_DECORD_LOG_PREFIX = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ")  # "[08:41:41] src/video/x.cc:218: "
_DECORD_CHECK = re.compile(r"Check failed: .*\) ")  # an internal assertion's expression, before its explanation
_TORCHCODEC_PREFIX = re.compile(r"^\w+, \S+:\d+, ")  # "decode_av_frame, /__w/.../SingleStreamDecoder.cpp:1493, "
# FFmpeg's AVERROR_INVALIDDATA: each backend words it its own way (decord only gives the code), we say it one way
_INVALID_DATA = ("-1094995529", "1094995529", "Invalid data found")


def decoder_message(error: Exception) -> str:
    """A decoder's error text without source locations, timestamps and assertion expressions: the reason only."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(code in (lines[0] if lines else "") for code in _INVALID_DATA):
        return "invalid data found when processing input"
    text = _DECORD_CHECK.sub("", _DECORD_LOG_PREFIX.sub("", lines[0] if lines else ""))
    text = _TORCHCODEC_PREFIX.sub("", text)
    text = text.replace("Thread worker: ", "").strip().rstrip(".")
    if not text:
        return type(error).__name__
    return text if text[:2].isupper() else f"{text[:1].lower()}{text[1:]}"  # keep "ERROR", lower "Error"


def check_frames(path: Path, frames: np.ndarray, expected: int) -> np.ndarray:
    """A decoder's output must be (expected, H, W, 3): anything else is a damaged file, not a crash later on."""
    if frames.ndim != 4 or frames.shape[0] != expected or frames.shape[-1] != 3:
        raise VideoDecodeError(f"{path}: decoder returned frames of shape {tuple(frames.shape)}")
    return frames
