"""Which frames of a video become a clip: uniform sampling at the centres of T equal segments."""

from __future__ import annotations

import numpy as np

from step_cache.errors import InputError


def segment_indices(num_frames: int, frames: int, clips: int = 1, start: int = 0) -> np.ndarray:
    """Frame numbers (clips, frames) sampled uniformly over ``[start, start + num_frames)``.

    The span is cut into ``frames`` equal segments. Clip k takes, in every segment, the point at fraction
    (k + 0.5) / clips of it: with one clip that is each segment's centre; with K clips the views interleave
    and together cover the video evenly (multi-view evaluation). Videos shorter than ``frames`` repeat frames.
    """
    if num_frames < 1:
        raise InputError(f"cannot sample from a video with {num_frames} frames")
    if frames < 1 or clips < 1:
        raise InputError(f"frames and clips must be >= 1, got frames={frames}, clips={clips}")
    segment = num_frames / frames
    offsets = (np.arange(clips)[:, None] + 0.5) / clips  # (clips, 1) position inside each segment
    positions = (np.arange(frames)[None, :] + offsets) * segment
    indices = np.minimum(np.floor(positions).astype(np.int64), num_frames - 1)
    return indices + start


def is_short(num_frames: int, frames: int) -> bool:
    """A video with fewer frames than asked for: some sampled frames are repeats."""
    return num_frames < frames
