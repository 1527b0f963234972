"""Augmented views of training videos (``extract --views N``): what each view draws and how its pixels are made.

A frozen-evaluation protocol such as V-JEPA's re-runs the backbone on a fresh augmented clip of every training video
every epoch (its eval.py ``make_dataloader``: random resized crops over 0.08-1 of the frame at aspect 0.75-4/3,
RandAugment, random erasing with p 0.25, no flip). A cache instead stores, once, N augmented views of each training
video beside its clean view (no RandAugment, no erasing; docs/training.md "Augmented views" says what differs);
training then draws one view per video per epoch. Each view draws, from an RNG seeded by (``--view-seed``, the
video's key, the view index), so that a resumed run, another part or another rank draws the same view:

1. a temporal jitter: every sampled frame moves to a uniformly drawn position inside its segment (with K clips,
   inside the clip's share of the segment, so the clips stay interleaved), optionally over a random sub-span of
   at least ``span`` of the video;
2. a random resized crop of the decoded frame (timm's/torchvision's ``RandomResizedCrop``: area fraction in
   ``scale``, log-uniform aspect ratio in ``ratio``, a centre crop after 10 failed tries), resized to the
   backbone's input size with its interpolation;
3. a horizontal flip with probability 0.5, only with ``flip`` (a flip turns *slide left* into *slide right*);
4. brightness, contrast and saturation factors in [1 - colour, 1 + colour] (the formulas of torchvision's
   ``adjust_*``, always in that order, where ``ColorJitter`` shuffles it), only with ``colour`` > 0.

The drawn parameters are stored per clip (``view_params``, JSON), so a view can be reproduced from the video.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from step_cache.errors import StepCacheError
from step_cache.extraction.preprocess import _PIL_MODES, Preprocessing
from step_cache.interface import option, switch

# The crop ranges of V-JEPA's pretraining configs (configs/pretrain/vitl16.yaml: random_resize_scale 0.3-1.0,
# aspect 0.75-1.35), not of its frozen evaluation (0.08-1.0, aspect 0.75-4/3): milder than (0.08, 1), which often
# crops the moving object out of an action clip.
DEFAULT_SCALE = (0.3, 1.0)
DEFAULT_RATIO = (0.75, 1.35)
VIEW_SPLITS = ("train", "")  # videos that get views; "" (no split): training may hold out its own val set
_CROP_TRIES = 10  # timm / torchvision RandomResizedCrop


class ViewError(StepCacheError, ValueError):
    """View options that cannot be used (bad ranges, an unknown class in the flip pairs)."""


@dataclass(frozen=True)
class ViewSettings:
    """How the augmented views of a cache are drawn (manifest ``extraction.views``)."""

    count: int = 0
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    span: float | None = None  # None: the whole video; else a random sub-span of at least this fraction
    colour: float = 0.0
    flip: bool = False
    flip_pairs: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # labels swapped by a flip
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ViewError(f"{option('view_scale')} must be 0 < LO <= HI <= 1 (area fractions), got {lo},{hi}")
        lo, hi = self.ratio
        if not 0 < lo <= hi:
            raise ViewError(f"{option('view_ratio')} must be 0 < LO <= HI (width/height), got {lo},{hi}")
        if self.count < 0:
            raise ViewError(f"{option('views')} must be >= 0, got {self.count}")
        if self.span is not None and not 0 < self.span <= 1:
            raise ViewError(f"{option('view_span')} must be in (0, 1], got {self.span}")
        if not 0 <= self.colour < 1:
            raise ViewError(f"{option('view_colour')} must be in [0, 1), got {self.colour}")
        if self.flip_pairs and not self.flip:
            raise ViewError(f"{option('flip_pairs')} swaps the labels of flipped views: it needs {switch('view_flip')}")

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``extraction.views``: every setting, so that any change alters the settings hash."""
        return {
            "count": self.count,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "span": self.span,
            "colour": self.colour,
            "flip": self.flip,
            "flip_pairs": [list(pair) for pair in self.flip_pairs],
            "seed": self.seed,
        }

    def swap_map(self) -> dict[str, str]:
        """Class name -> its mirror, both ways."""
        return {a: b for pair in self.flip_pairs for a, b in (pair, pair[::-1])}


def gets_views(split: str | None) -> bool:
    """Training videos (split "train", or no split) get augmented views; val and test keep the clean view only."""
    return (split or "") in VIEW_SPLITS


def view_rng(seed: int, key: str, view: int) -> np.random.Generator:
    """The RNG of one view of one video: the same on every run, part and rank (no dependence on order)."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def jittered_indices(
    rng: np.random.Generator, num_frames: int, frames: int, clips: int, start: int, span: float | None
) -> tuple[np.ndarray, list[int]]:
    """(clips, frames) frame numbers: each moved to a random point of its clip's share of its segment, over the
    whole span or a random sub-span of at least ``span`` of it. Returns the indices and the sub-span [first, end)."""
    first, length = 0, num_frames
    if span is not None and span < 1:
        fraction = rng.uniform(span, 1.0)
        length = max(1, round(num_frames * fraction))
        first = int(rng.integers(0, num_frames - length + 1))
    segment = length / frames
    offsets = (np.arange(clips)[:, None] + rng.random((clips, frames))) / clips
    positions = (np.arange(frames)[None, :] + offsets) * segment
    indices = np.minimum(np.floor(positions).astype(np.int64), length - 1)
    return indices + start + first, [start + first, start + first + length]


def random_resized_crop(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> list[int]:
    """[top, left, height, width] as torchvision's RandomResizedCrop.get_params draws it (with numpy's RNG)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_TRIES):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return [int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w]
    in_ratio = width / height  # fallback: the largest centre crop within the ratio range
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return [(height - h) // 2, (width - w) // 2, h, w]


def draw_view(
    settings: ViewSettings, key: str, view: int, num_frames: int, frames: int, clips: int, start: int
) -> tuple[np.random.Generator, dict[str, Any]]:
    """The temporal part of a view (drawn before the frames are read); ``finish_view`` draws the rest."""
    rng = view_rng(settings.seed, key, view)
    indices, span = jittered_indices(rng, num_frames, frames, clips, start, settings.span)
    return rng, {"view": view, "frame_indices": indices.tolist(), "span": span}


def finish_view(
    settings: ViewSettings, rng: np.random.Generator, params: dict[str, Any], height: int, width: int
) -> dict[str, Any]:
    """Draw the spatial part of a view once the frame size is known (crop, then flip, then colour)."""
    params["crop"] = random_resized_crop(rng, height, width, settings.scale, settings.ratio)
    params["flip"] = bool(settings.flip and rng.random() < 0.5)
    s = settings.colour
    params["colour"] = [float(f) for f in rng.uniform(1 - s, 1 + s, 3)] if s > 0 else None
    return params


def render_view(frames: np.ndarray, params: dict[str, Any], preprocessing: Preprocessing) -> np.ndarray:
    """(N, H, W, 3) uint8 decoded frames -> (N, 3, crop_h, crop_w) uint8 pixels of the view (``params``)."""
    from PIL import Image

    top, left, h, w = params["crop"]
    crop_h, crop_w = preprocessing.crop_size
    out = np.empty((len(frames), crop_h, crop_w, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        image = Image.fromarray(np.ascontiguousarray(frame[top : top + h, left : left + w]))
        image = image.resize((crop_w, crop_h), resample=_PIL_MODES[preprocessing.interpolation])
        out[i] = np.asarray(image)
    if params["flip"]:
        out = out[:, :, ::-1]
    if params.get("colour"):
        out = colour_jitter(out, *params["colour"])
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def colour_jitter(frames: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """torchvision's adjust_brightness, adjust_contrast (per-frame grey mean) and adjust_saturation on (N, H, W, 3)
    uint8 frames, applied in that order, in float32, clamped to [0, 255] after each step and rounded once at the end
    (torchvision truncates to uint8 after each step on uint8 tensors: values may differ by one)."""
    x = frames.astype(np.float32)
    x = np.clip(x * brightness, 0, 255)
    grey = _grey(x)
    mean = grey.mean(axis=(1, 2), keepdims=True)[..., None]
    x = np.clip(contrast * x + (1 - contrast) * mean, 0, 255)
    x = np.clip(saturation * x + (1 - saturation) * _grey(x)[..., None], 0, 255)
    return np.round(x).astype(np.uint8)


def _grey(x: np.ndarray) -> np.ndarray:
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def view_label(label: str | None, params: dict[str, Any], swap: dict[str, str]) -> str | None:
    """The class of a view: a flipped view of a class with a mirror in the flip pairs is of the mirror class."""
    if label is not None and params.get("flip") and label in swap:
        return swap[label]
    return label


def view_sampler(
    settings: ViewSettings, key: str, frames: int, clips: int
) -> Callable[[int, int], list[tuple[np.random.Generator, dict[str, Any]]]]:
    """For the decoder: given (frames in the span, its start), the temporal draws of views 1..N of ``key``."""

    def sample(num_frames: int, start: int) -> list[tuple[np.random.Generator, dict[str, Any]]]:
        return [draw_view(settings, key, v, num_frames, frames, clips, start) for v in range(1, settings.count + 1)]

    return sample


def params_json(params: dict[str, Any]) -> str:
    """The stored ``view_params`` of one clip of a view (compact, sorted keys)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def render_views(decoded: Any, settings: ViewSettings, preprocessing: Preprocessing) -> list[np.ndarray]:
    """The pixels of every view of ``decoded`` (DecodedClips), drawing their spatial parameters in place."""
    height, width = decoded.frames.shape[1:3]
    pixels = []
    for rng, params, frames in decoded.views:
        finish_view(settings, rng, params, height, width)
        pixels.append(render_view(frames, params, preprocessing))
    return pixels
