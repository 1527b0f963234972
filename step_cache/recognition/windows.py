"""Which frames a window of an untrimmed video samples: each window is a clip of ``length`` frames sampled with the
run's T frames and K clips exactly as extraction samples a training video (``segment_indices``), so the probe sees
windows as it saw its training clips. Windows start every ``stride`` frames.

With the stride one segment of the window (``length / T`` frames, the default), consecutive windows share T - 1
of their sampled frames per clip: each new window needs one new frame encoded per clip, not T.

A run trained on a ``--frame-step S`` cache samples each window as extraction sampled its videos
(``frame_step_indices``): by default a window is K (T S + 1) frames, the shortest video in which each of the K clips
gets its full T frames S apart (a video of exactly T S frames is sampled as a short one, as the anchor does), so a
window spans what a training clip spanned; windows start every S frames. A longer ``window`` places each clip in
the middle of its part of the window, as extraction does in a longer video.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from step_cache.errors import StepCacheError
from step_cache.extraction.sampling import frame_step_indices, segment_indices
from step_cache.interface import option


class WindowError(StepCacheError, ValueError):
    """Window settings that cannot work (no window length known, a stride below one frame...)."""


@dataclass(frozen=True)
class Window:
    start: int  # first frame of the window
    end: int  # one past its last frame
    indices: np.ndarray  # (K, T) frame numbers it samples

    @property
    def last(self) -> int:
        """The frame after which the window can be classified."""
        return int(self.indices.max())

    def seconds(self, fps: float) -> tuple[float, float]:
        return self.start / fps, self.end / fps


@dataclass(frozen=True)
class WindowPlan:
    length: int  # frames per window
    stride: int  # frames between window starts
    frames: int  # T
    clips: int  # K
    frame_step: int | None = None  # T frames this far apart per clip (a frame-step run), else segment centres

    def window(self, start: int, length: int | None = None) -> Window:
        length = length or self.length
        if self.frame_step:
            indices = frame_step_indices(length, self.frames, self.frame_step, self.clips, start=start)
        else:
            indices = segment_indices(length, self.frames, self.clips, start=start)
        return Window(start, start + length, indices)

    def stream(self) -> Iterator[Window]:
        """Windows of an endless stream, in order."""
        start = 0
        while True:
            yield self.window(start)
            start += self.stride

    def over(self, total: int) -> list[Window]:
        """Windows covering a video of ``total`` frames: every ``stride`` frames, plus one ending at the last frame
        when the stride leaves the end uncovered; a video shorter than a window is one window (sampled as extraction
        samples a short video)."""
        if total < 1:
            raise WindowError("the video has no frames")
        if total <= self.length:
            return [self.window(0, total)]
        starts = list(range(0, total - self.length + 1, self.stride))
        if starts[-1] + self.length < total:
            starts.append(total - self.length)
        return [self.window(start) for start in starts]


def plan_windows(
    fps: float,
    frames: int,
    clips: int,
    window: float | None,
    stride: float | None,
    typical: float | None = None,
    frame_step: int | None = None,
) -> WindowPlan:
    """A plan from seconds: ``window`` (default: ``typical``, the median training-video duration) and ``stride``
    (default: one segment of the window, for which the window is rounded to a multiple of T frames). With
    ``frame_step`` S (a frame-step run): ``window`` defaults to K (T S + 1) frames and ``stride`` to S frames."""
    if fps <= 0:
        raise WindowError(f"frame rate must be positive, got {fps}")
    if frame_step:
        length = clips * (frames * frame_step + 1) if window is None else _window_frames(window, fps)
        step = frame_step if stride is None else _stride_frames(stride, fps)
        return WindowPlan(length=length, stride=step, frames=frames, clips=clips, frame_step=frame_step)
    seconds = window if window is not None else typical
    if seconds is None:
        raise WindowError(
            "the run's cache records no clip durations (extracted before they were recorded, or its manifest is "
            f"gone): give the window length in seconds ({option('window')})"
        )
    length = _window_frames(seconds, fps)
    if stride is None:
        length = max(frames, round(length / frames) * frames)
        step = length // frames
    else:
        step = _stride_frames(stride, fps)
    return WindowPlan(length=length, stride=step, frames=frames, clips=clips)


def _window_frames(seconds: float, fps: float) -> int:
    if seconds <= 0:
        raise WindowError(f"window must be positive, got {seconds} s")
    return max(1, round(seconds * fps))


def _stride_frames(seconds: float, fps: float) -> int:
    step = round(seconds * fps)
    if step < 1:
        raise WindowError(f"stride {seconds} s is less than one frame at {fps:g} frames/s")
    return step
