"""Test-time views of val/test videos (``extract --test-views SEGMENTSxCROPS``), made as V-JEPA's and V-JEPA 2's
frozen evaluation makes them (``evals/video_classification_frozen``: ``make_dataloader`` with
``num_segments`` x ``num_views_per_segment``; ``utils.py``'s ``EvalVideoTransform``):

- temporally, S segments: today's S interleaved clips (``sampling.segment_indices``), or with ``--frame-step`` the
  anchor's window of T frames S apart in each of S equal partitions (``sampling.frame_step_indices``);
- spatially, C crops per segment: every frame is resized so that its *shorter* side equals the crop side (the
  anchor's ``Resize(short_side_size)``, ``short_side_size = img_size``: no 256/224 margin), then C square crops of
  that side are cut along the *longer* side, crop i starting at ``i * ((long - side) // (C - 1))`` (the first at
  the top/left edge, the last within a rounding step of the bottom/right one).

The anchor resizes numpy frames with OpenCV's ``cv2.resize(INTER_LINEAR)`` (``functional.resize_clip``):
half-pixel sample positions, two taps, no antialiasing. ``resize_linear`` does that arithmetic in numpy (OpenCV
is not a dependency) with OpenCV's fixed-point coefficients (11 bits per pass, its generic C++ path); its SIMD
paths round differently and may give a pixel one grey level away. One crop (C = 1) is today's centre crop of the
backbone's own eval transform, as the anchor's ``VideoTransform`` also falls back to a centre crop for one view.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from step_cache.errors import StepCacheError
from step_cache.interface import option

TEST_VIEW_SPLITS = ("val", "test")  # videos that get test views; training videos keep their K clips
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


class TestViewError(StepCacheError, ValueError):
    """Test-view or frame-step options that cannot be used."""

    __test__ = False  # not a pytest class, whatever its name


@dataclass(frozen=True)
class TestViews:
    """S temporal segments x C spatial crops per val/test video (manifest ``extraction.test_views``)."""

    __test__ = False  # not a pytest class, whatever its name

    segments: int
    crops: int

    def __post_init__(self) -> None:
        if self.segments < 1 or self.crops < 1:
            raise TestViewError(
                f"{option('test_views')} needs SEGMENTS and CROPS >= 1, got {self.segments}x{self.crops}"
            )

    @classmethod
    def parse(cls, spec: str | tuple[int, int] | list[int] | TestViews) -> TestViews:
        """``"2x3"`` (also ``2×3``, ``2,3``) or ``(2, 3)`` -> TestViews(2, 3)."""
        if isinstance(spec, TestViews):
            return spec
        if isinstance(spec, (tuple, list)):
            if len(spec) != 2:
                raise TestViewError(f"{option('test_views')} takes (segments, crops), got {spec!r}")
            return cls(int(spec[0]), int(spec[1]))
        match = re.fullmatch(r"\s*(\d+)\s*[x×X,]\s*(\d+)\s*", str(spec))
        if not match:
            raise TestViewError(f"{option('test_views')} takes SEGMENTSxCROPS such as 2x3 or 8x3, got {spec!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def to_dict(self) -> dict[str, Any]:
        return {"segments": self.segments, "crops": self.crops}

    @property
    def rows(self) -> int:
        """Shard rows per val/test video."""
        return self.segments * self.crops


def gets_test_views(split: str | None) -> bool:
    """Val and test videos get the test views; training videos (and videos without a split) keep today's rows."""
    return (split or "") in TEST_VIEW_SPLITS


def short_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) after the anchor's ``Resize(side)``: the shorter side becomes ``side``, the longer one
    ``int(side * long / short)`` (truncated); a square frame's height is the shorter side."""
    if width < height:
        return int(side * height / width), side
    return side, int(side * width / height)


def crop_starts(height: int, width: int, side: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of each of ``crops`` square crops of ``side`` in a resized (height, width) frame: spaced by
    ``(long - side) // (crops - 1)`` along the longer side (height when height > width), at 0 on the other."""
    if crops == 1:
        return [((height - side) // 2, (width - side) // 2)]
    step = (max(height, width) - side) // (crops - 1)
    return [(i * step, 0) if height > width else (0, i * step) for i in range(crops)]


def _taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's INTER_LINEAR taps along one axis: first source index, and the two fixed-point weights."""
    scale = np.float32(source / target)
    position = (np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    first = np.floor(position).astype(np.int64)
    fraction = position - first
    fraction[first < 0], first[first < 0] = 0, 0
    edge = first >= source - 1
    fraction[edge], first[edge] = 0, source - 1
    # saturate_cast<short>(float) rounds half to even, as np.rint
    w1 = np.rint(fraction * _COEF_SCALE).astype(np.int64)
    w0 = np.rint((np.float32(1) - fraction) * _COEF_SCALE).astype(np.int64)
    return first, w0, w1


def resize_linear(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, height, width, 3) uint8 with OpenCV's INTER_LINEAR arithmetic (module docstring).
    A frame already of that size is returned as is (the anchor skips the resize then)."""
    source_h, source_w = frames.shape[1:3]
    if (source_h, source_w) == (height, width):
        return frames
    x0, a0, a1 = _taps(source_w, width)
    y0, b0, b1 = _taps(source_h, height)
    x1, y1 = np.minimum(x0 + 1, source_w - 1), np.minimum(y0 + 1, source_h - 1)
    # The result is the exact integer sum of b_i * a_j * pixel (rounded once), so the order of the two passes does
    # not change it: the rows first, which gathers only the rows used. int32 holds it: 255 * 2^11 * 2^11 < 2^31.
    rows = np.take(frames, y0, axis=1).astype(np.int32) * b0[None, :, None, None].astype(np.int32)
    rows += np.take(frames, y1, axis=1).astype(np.int32) * b1[None, :, None, None].astype(np.int32)
    mixed = np.take(rows, x0, axis=2) * a0[None, None, :, None].astype(np.int32)
    mixed += np.take(rows, x1, axis=2) * a1[None, None, :, None].astype(np.int32)
    shift = 2 * _COEF_BITS  # FixedPtCast<int, uchar, 22>: round, then saturate
    mixed += 1 << (shift - 1)
    return np.clip(mixed >> shift, 0, 255).astype(np.uint8)


def render_crops(frames: np.ndarray, side: int, crops: int) -> np.ndarray:
    """(N, H, W, 3) uint8 frames -> (crops, N, 3, side, side) uint8: the anchor's short-side resize to ``side``
    and ``crops`` crops along the long side (``crops`` >= 2; one crop is the backbone's own centre crop)."""
    height, width = short_side_size(frames.shape[1], frames.shape[2], side)
    resized = resize_linear(frames, height, width)
    views = [resized[:, top : top + side, left : left + side] for top, left in crop_starts(height, width, side, crops)]
    return np.ascontiguousarray(np.stack(views).transpose(0, 1, 4, 2, 3))


def view_pixels(frames: np.ndarray, segments: int, crops: int, side: int) -> np.ndarray:
    """(segments * T, H, W, 3) decoded frames -> (segments * crops * T, 3, side, side): segment-major, then crop,
    then frame, the order of the shard rows (clip = segment, crop)."""
    views = render_crops(frames, side, crops)  # (C, S*T, 3, side, side)
    per_segment = views.reshape(crops, segments, -1, *views.shape[2:]).transpose(1, 0, 2, 3, 4, 5)
    return np.ascontiguousarray(per_segment.reshape(-1, *views.shape[2:]))


def square_side(crop_size: tuple[int, int]) -> int:
    """The crop side of a backbone input: the anchor's crops are square."""
    if crop_size[0] != crop_size[1]:
        raise TestViewError(
            f"{option('test_views')} with several crops needs a square backbone input, got "
            f"{crop_size[0]}x{crop_size[1]}"
        )
    return crop_size[0]
