"""Which frames of a video become a clip: uniform sampling at the centres of T equal segments (``segment-centres``,
the default), or T frames a fixed step apart as V-JEPA's evaluation samples them (``frame-step``)."""

from __future__ import annotations

import numpy as np

from step_cache.errors import InputError

SAMPLING_STRATEGIES = ("segment-centres", "frame-step")  # manifest extraction.sampling.strategy of extract


def sampling_record(frames: int, clips: int, frame_step: int | None) -> dict[str, object]:
    """The manifest's ``extraction.sampling``: segment centres, or (``frame_step``) T frames that far apart."""
    if frame_step is None:
        return {"frames": frames, "clips": clips, "strategy": "segment-centres"}
    return {"frames": frames, "clips": clips, "strategy": "frame-step", "frame_step": frame_step}


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


def repeats_frames(indices: np.ndarray) -> bool:
    """Whether a clip (a row of ``indices``) takes some frame twice: the video, or its span, is shorter than the
    clip (fewer than T frames; with a frame step, fewer than the window), so that frame is repeated."""
    rows = np.sort(np.asarray(indices).reshape(-1, np.shape(indices)[-1]), axis=1)
    return bool((np.diff(rows, axis=1) == 0).any())


def frame_step_indices(num_frames: int, frames: int, step: int, clips: int = 1, start: int = 0) -> np.ndarray:
    """Frame numbers (clips, frames): T frames ``step`` apart in each of ``clips`` segments of ``[start, start +
    num_frames)``, as V-JEPA's ``VideoDataset.loadvideo_decord`` samples them for evaluation (``num_clips`` =
    segments, ``allow_clip_overlap=True`` as ``make_dataloader``'s ``allow_segment_overlap``):

    - the video is cut into ``clips`` partitions of ``num_frames // clips`` frames; when a partition is longer than
      the window (``frames * step``), clip i is ``linspace(s, s + window, frames)`` clipped to ``s + window - 1``,
      offset by ``i * partition``. The anchor draws the window's end uniformly in ``[window, partition)`` even at
      evaluation (``random_clip_sampling`` keeps its default, True); a cache is extracted once, so it takes the
      middle of that range, ``(window + partition - 1) // 2`` (the draw's mean, rounded down);
    - otherwise (a short video, or partitions shorter than the window) the windows overlap: each clip takes
      ``linspace(0, L, L // step)`` with ``L = min(window, num_frames) - 1``, padded to T with L and clipped to
      ``L - 1`` (so its last frame repeats), clip i offset by ``i * ((num_frames - window) // (clips - 1))`` when
      the video is longer than one window, else 0. A one-frame video gives frame 0 throughout.
    """
    if num_frames < 1:
        raise InputError(f"cannot sample from a video with {num_frames} frames")
    if frames < 1 or clips < 1 or step < 1:
        raise InputError(f"frames, clips and frame step must be >= 1, got {frames}, {clips}, {step}")
    window = frames * step
    partition = num_frames // clips
    rows = []
    for i in range(clips):
        if partition > window:
            end = (window + partition - 1) // 2
            first = end - window
            indices = np.clip(np.linspace(first, end, num=frames), first, end - 1).astype(np.int64) + i * partition
        else:
            last = min(window, num_frames) - 1
            spaced = np.linspace(0, last, num=last // step)
            padded = np.concatenate((spaced, np.full(frames - last // step, float(last))))
            indices = np.clip(padded, 0, max(last - 1, 0)).astype(np.int64)
            offset = (num_frames - window) // (clips - 1) if num_frames > window else 0
            indices = indices + i * offset
        rows.append(indices)
    return np.stack(rows) + start
