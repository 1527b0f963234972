"""Decoding sampled frames with decord, and the errors a bad video gives."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from step_cache.extraction.sampling import is_short, segment_indices


class VideoDecodeError(RuntimeError):
    """A video that cannot be read; the message names the file and the problem."""


@dataclass
class DecodedClips:
    frames: np.ndarray  # (clips * T, H, W, 3) uint8 RGB
    frame_indices: np.ndarray  # (clips, T) frame numbers in the video
    num_frames: int  # frames in the sampled span (whole video or segment)
    short: bool
    warnings: list[str] = field(default_factory=list)  # decoded, but not all that was asked for (see decode_clips)


def _open_reader(path: Path):
    import av  # noqa: F401 - before decord, whose bundled FFmpeg loaded first breaks PyAV (see declared_frames)
    import decord  # imported lazily: worker processes import it once, and tests of other parts do not need it

    if not path.exists():
        raise VideoDecodeError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as error:  # noqa: BLE001 - decord raises bare RuntimeError/DECORDError for anything unreadable
        raise VideoDecodeError(f"{path}: not a readable video ({_why_unopenable(path, error)})") from None


def _why_unopenable(path: Path, error: Exception) -> str:
    """decord only says 'Error reading FILE...' (FFmpeg's reason goes to its log): ask FFmpeg through PyAV."""
    try:
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                return "the file has no video stream"
    except Exception as probe:  # noqa: BLE001 - av.error.* carry FFmpeg's reason in strerror
        reason = getattr(probe, "strerror", None) or _decoder_message(probe)
        return f"{reason[:1].lower()}{reason[1:]}: not a video, or a damaged or cut-short one"
    return f"the decoder cannot open it: {_decoder_message(error)}"


_DECORD_LOG_PREFIX = re.compile(r"\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ")  # "[08:41:41] src/video/x.cc:218: "
_DECORD_CHECK = re.compile(r"Check failed: .*\) ")  # an internal assertion's expression, before its explanation


def _decoder_message(error: Exception) -> str:
    """decord's error text without its source locations, timestamps and assertion expressions: the reason only."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = _DECORD_CHECK.sub("", _DECORD_LOG_PREFIX.sub("", lines[0] if lines else ""))
    text = text.replace("Thread worker: ", "").strip().rstrip(".")
    if not text:
        return type(error).__name__
    return text if text[:2].isupper() else f"{text[:1].lower()}{text[1:]}"  # keep "ERROR", lower "Error"


def decode_clips(
    path: str | Path, frames: int, clips: int = 1, start_frame: int | None = None, end_frame: int | None = None
) -> DecodedClips:
    """Decode ``clips`` x ``frames`` uniformly sampled frames of ``path`` (or of ``[start_frame, end_frame)``)."""
    path = Path(path)
    reader = _open_reader(path)
    total = len(reader)
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
    indices = segment_indices(end - start, frames, clips, start=start)
    # decord decodes each unique frame once; repeated indices (short videos, overlapping clips) are copied.
    unique, inverse = np.unique(indices.ravel(), return_inverse=True)
    try:
        batch = reader.get_batch(unique.tolist()).asnumpy()
    except Exception as error:  # noqa: BLE001 - any decoder error fails this video only
        raise VideoDecodeError(f"{path}: decoding failed, the file is damaged ({_decoder_message(error)})") from None
    if batch.ndim != 4 or batch.shape[0] != len(unique) or batch.shape[-1] != 3:
        raise VideoDecodeError(f"{path}: decoder returned frames of shape {batch.shape}")
    return DecodedClips(batch[inverse], indices, end - start, is_short(end - start, frames), warnings)


def declared_frames(path: Path) -> tuple[int | None, bool]:
    """Frames the container says the video stream has: its frame count, else its duration (the stream's, its
    Matroska DURATION tag, or the file's) times the frame rate. decord counts only the frames it can index, so a
    file cut short (a truncated .mkv) opens and decodes without error, with fewer frames: comparing with this
    number is how such a file is noticed. Returns (frames, exact): exact when the container states the count, not
    when it is estimated from the duration; (None, False) when the container does not say (or PyAV cannot read
    it)."""
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
