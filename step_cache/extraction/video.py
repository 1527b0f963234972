"""Decoding the sampled frames of a video with any decoder backend (see ``decoders``), and the warnings and errors
a bad video gives."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from step_cache.extraction.decoders import DEFAULT_DECODER, open_video
from step_cache.extraction.decoders.base import VideoDecodeError, decoder_message
from step_cache.extraction.sampling import frame_step_indices, repeats_frames, segment_indices


@dataclass
class DecodedClips:
    frames: np.ndarray  # (clips * T, H, W, 3) uint8 RGB
    frame_indices: np.ndarray  # (clips, T) frame numbers in the video
    num_frames: int  # frames in the sampled span (whole video or segment)
    short: bool
    warnings: list[str] = field(default_factory=list)  # decoded, but not all that was asked for (see decode_clips)
    fps: float | None = None  # the container's frame rate (None when it does not say): durations in seconds
    # augmented views (extract --views): (rng, drawn parameters, (clips * T, H, W, 3) frames) per view
    views: list[tuple[Any, dict[str, Any], np.ndarray]] = field(default_factory=list)


# (frames in the sampled span, its first frame) -> [(rng, parameters with "frame_indices" (clips, T))] per view
ViewDraws = Callable[[int, int], list[tuple[Any, dict[str, Any]]]]
_decoder_message = decoder_message  # the name the tests (and older callers) use


def decode_clips(
    path: str | Path,
    frames: int,
    clips: int = 1,
    start_frame: int | None = None,
    end_frame: int | None = None,
    decoder: str = DEFAULT_DECODER,
    views: ViewDraws | None = None,
    frame_step: int | None = None,
) -> DecodedClips:
    """Decode ``clips`` x ``frames`` uniformly sampled frames of ``path`` (or of ``[start_frame, end_frame)``) with
    the named decoder backend; VideoDecodeError naming the file and the problem when it cannot be read.
    ``views(frames in the span, its start)`` draws augmented views, whose frames are read in the same pass.
    ``frame_step``: T frames that far apart per clip (``sampling.frame_step_indices``) instead of segment centres."""
    path = Path(path)
    source = _open_source(path, decoder)
    try:
        return _sample(source, path, frames, clips, start_frame, end_frame, views, frame_step)
    finally:
        source.close()


def decode_clips_on_device(
    path: str | Path,
    frames: int,
    clips: int,
    start_frame: int | None,
    end_frame: int | None,
    decoder: str,
    device: str,
    frame_step: int | None = None,
) -> DecodedClips:
    """``decode_clips`` with a decoder that decodes on ``device`` (torchcodec-cuda): ``frames`` of the result is
    an (N, 3, H, W) uint8 tensor there, never copied to the host."""
    path = Path(path)
    source = open_video(path, decoder, device=device)
    try:
        return _sample(_TensorReads(source), path, frames, clips, start_frame, end_frame, frame_step=frame_step)
    finally:
        source.close()


class _TensorReads:
    """A source whose reads give the decoder's device tensors (N, 3, H, W) instead of host arrays."""

    def __init__(self, source):
        self.num_frames, self.fps, self.read = source.num_frames, source.fps, source.read_tensor


def _open_source(path: Path, decoder: str):
    return open_video(path, decoder)


def _sample(
    source,
    path: Path,
    frames: int,
    clips: int,
    start_frame: int | None,
    end_frame: int | None,
    views: ViewDraws | None = None,
    frame_step: int | None = None,
):
    total = source.num_frames
    start = start_frame or 0
    end = total if end_frame is None else min(end_frame, total)
    if total == 0:
        raise VideoDecodeError(f"{path}: video has no frames")
    if start >= end:
        raise VideoDecodeError(f"{path}: segment [{start}, {end_frame}) is outside the video's {total} frames")
    warnings = []
    declared, exact = declared_frames(path)
    # A stated frame count may differ from what the decoder indexes by a frame or two (edit lists, a last frame
    # without a packet); a count estimated from duration x frame rate by rounding and variable rates as well.
    if declared is not None and total < declared - (2 if exact else max(2, 0.05 * declared)):
        warnings.append(
            f"truncated: {total} of the {declared} frames the container declares could be decoded; "
            f"frames were sampled from those {total}"
        )
    if end_frame is not None and end_frame > total:
        warnings.append(
            f"segment [{start}, {end_frame}) ends past the video's {total} frames; frames were sampled from "
            f"[{start}, {end})"
        )
    if frame_step:
        indices = frame_step_indices(end - start, frames, frame_step, clips, start=start)
    else:
        indices = segment_indices(end - start, frames, clips, start=start)
    drawn = views(end - start, start) if views is not None else []
    wanted = [indices, *(np.asarray(params["frame_indices"]) for _, params in drawn)]
    # Each unique frame is decoded once, for the clean clips and every view; repeated indices (short videos,
    # overlapping clips or views) are copied.
    unique, inverse = np.unique(np.concatenate([w.ravel() for w in wanted]), return_inverse=True)
    batch = source.read(unique.tolist())  # VideoDecodeError when the file turns out damaged
    n = indices.size
    decoded = DecodedClips(batch[inverse[:n]], indices, end - start, repeats_frames(indices), warnings, fps=source.fps)
    decoded.views = [(rng, params, batch[inverse[n * v : n * (v + 1)]]) for v, (rng, params) in enumerate(drawn, 1)]
    return decoded


def declared_frames(path: Path) -> tuple[int | None, bool]:
    """Frames the container says the video stream has: its frame count, else its duration (the stream's, its
    Matroska DURATION tag, or the file's) times the frame rate. Decoders count only the frames they can index,
    so a file cut short (a truncated .mkv) opens and decodes without error, with fewer frames: comparing with
    this number is how such a file is noticed. Returns (frames, exact): exact when the container states the
    count, not when it is estimated from the duration; (None, False) when the container does not say (or PyAV
    cannot read it)."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return int(stream.frames), True
            rate = stream.average_rate or stream.guessed_rate
            tagged = str(stream.metadata.get("DURATION", ""))  # Matroska's per-stream "HH:MM:SS.fffffffff"
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif tagged.count(":") == 2:  # the video's own duration: an audio track may outlast it
                hours, minutes, rest = tagged.split(":")
                seconds = int(hours) * 3600 + int(minutes) * 60 + float(rest)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                return None, False
            return (round(seconds * float(rate)) if rate else None), False
    except Exception:  # noqa: BLE001 - a probe only: any failure leaves the check to decord
        return None, False


def quiet_decoder_logs() -> None:
    """Silence FFmpeg's and decord's per-file noise on stderr in a decode worker process.

    Every failure is reported by us, once, naming the file; the C libraries write straight to file descriptor 2,
    so only redirecting it quiets them. Set STEP_CACHE_DECODER_LOGS=1 to keep their output for debugging.
    """
    if os.environ.get("STEP_CACHE_DECODER_LOGS") == "1":
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


@contextlib.contextmanager
def decoder_logs_silenced() -> Iterator[None]:
    """Silence FFmpeg's and decord's stderr lines for the duration, in a process that keeps its own stderr (the
    ``timeline`` command): an unreadable file then gives our one-line error only. File descriptor 2 is redirected
    and restored, under a lock with a count, so nested or concurrent uses restore the real stderr last.
    STEP_CACHE_DECODER_LOGS=1 keeps the decoders' lines, as for ``quiet_decoder_logs``."""
    global _silenced, _saved_stderr
    if os.environ.get("STEP_CACHE_DECODER_LOGS") == "1":
        yield
        return
    with _silence_lock:
        if _silenced == 0:
            sys.stderr.flush()
            _saved_stderr = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        _silenced += 1
    try:
        yield
    finally:
        with _silence_lock:
            _silenced -= 1
            if _silenced == 0 and _saved_stderr is not None:
                os.dup2(_saved_stderr, 2)
                os.close(_saved_stderr)
                _saved_stderr = None


_silence_lock = threading.Lock()
_silenced = 0  # decoder_logs_silenced blocks open
_saved_stderr: int | None = None  # the real stderr while they are


__all__ = [
    "DecodedClips",
    "VideoDecodeError",
    "declared_frames",
    "decode_clips",
    "decode_clips_on_device",
    "decoder_logs_silenced",
    "quiet_decoder_logs",
]
