"""Decoding sampled frames with decord, and the errors a bad video gives."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


def _open_reader(path: Path):
    import decord  # imported lazily: worker processes import it once, and tests of other parts do not need it

    if not path.exists():
        raise VideoDecodeError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as error:  # noqa: BLE001 - decord raises bare RuntimeError/DECORDError for anything unreadable
        raise VideoDecodeError(f"{path}: not a readable video ({_first_line(error)})") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


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
    indices = segment_indices(end - start, frames, clips, start=start)
    # decord decodes each unique frame once; repeated indices (short videos, overlapping clips) are copied.
    unique, inverse = np.unique(indices.ravel(), return_inverse=True)
    try:
        batch = reader.get_batch(unique.tolist()).asnumpy()
    except Exception as error:  # noqa: BLE001 - any decoder error fails this video only
        raise VideoDecodeError(f"{path}: decoding failed ({_first_line(error)})") from None
    if batch.ndim != 4 or batch.shape[0] != len(unique) or batch.shape[-1] != 3:
        raise VideoDecodeError(f"{path}: decoder returned frames of shape {batch.shape}")
    return DecodedClips(batch[inverse], indices, end - start, is_short(end - start, frames))


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
