"""Rendering one clip of a benchmark class: textured background, the action, distractors, camera jitter, light.

Everything random that is not the action itself is stationary or symmetric in time (distractors move in
isotropically random directions, the camera shakes with stationary noise, the action starts at a uniformly random
time, the light is fixed to the world), so a clip and its reverse are equally likely under every class's process:
only the action's direction separates mirrored classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from step_cache.demo_dataset.actions import KINDS, Action, Kind, Stage
from step_cache.demo_dataset.drawing import ObjectTrack, composite, stationary_noise, textured_background
from step_cache.errors import StepCacheError


class BenchmarkError(StepCacheError, ValueError):
    """Bad settings for the generated benchmark; the message says which and why."""


@dataclass(frozen=True)
class SceneConfig:
    """How hard the scene makes it to read the action. ``SceneConfig.from_difficulty`` sets all knobs at once."""

    camera_jitter: float = 1.5  # standard deviation of the camera shake, pixels per 112 pixels of frame
    max_distractors: int = 3  # each clip gets 0..max small objects drifting in random directions
    texture_contrast: float = 0.5  # 0: flat background colour, 1: strongly patterned
    texture_noise: float = 4.0  # fine grain on the background (0-255 scale)
    action_fraction: tuple[float, float] = (0.55, 0.9)  # the action lasts this share of the clip (uniform)
    hue_spread: float = 0.08  # actors' hue: the kind's hue +- this (0.5: any hue; the pair's classes share it)
    lighting: float = 0.45  # light from the right: brightness x (1 -+ lighting) from the left to the right edge

    @classmethod
    def from_difficulty(cls, difficulty: float = 0.5) -> SceneConfig:
        """0: a still camera, a plain background, no distractors, long actions, actors of one hue per kind and
        strong lighting; 1: the opposite (any hue, weak lighting). 0.5 is the default."""
        if not 0.0 <= difficulty <= 1.0:
            raise BenchmarkError(f"difficulty must be between 0 and 1, got {difficulty}")
        return cls(
            camera_jitter=3.0 * difficulty,
            max_distractors=round(6 * difficulty),
            texture_contrast=0.15 + 0.7 * difficulty,
            texture_noise=8.0 * difficulty,
            action_fraction=(0.8 - 0.5 * difficulty, 0.95 - 0.1 * difficulty),
            hue_spread=0.02 + 0.48 * difficulty**3,
            lighting=0.6 - 0.3 * difficulty,
        )

    def check(self) -> None:
        low, high = self.action_fraction
        if not 0.0 < low <= high <= 1.0:
            raise BenchmarkError(f"action_fraction must satisfy 0 < low <= high <= 1, got {self.action_fraction}")
        if self.camera_jitter < 0 or self.max_distractors < 0 or self.texture_noise < 0:
            raise BenchmarkError("camera_jitter, max_distractors and texture_noise must not be negative")
        if not 0.0 <= self.lighting < 1.0:
            raise BenchmarkError(f"lighting must be in [0, 1), got {self.lighting}")
        if not 0.0 <= self.hue_spread <= 0.5:
            raise BenchmarkError(f"hue_spread must be between 0 and 0.5, got {self.hue_spread}")


@dataclass(frozen=True)
class RenderedClip:
    label: str
    frames: np.ndarray  # (T, H, W, 3) uint8, in the clip's order
    main: ObjectTrack  # the acting object, in the clip's order
    progress: np.ndarray  # (T,) the forward action's progress, in the clip's order (falls for a mirrored class)


def class_table(kinds: tuple[str, ...] | list[str] | None = None) -> dict[str, tuple[Kind, bool]]:
    """Class name -> (kind, played backwards?) for the chosen kinds (all kinds by default), in kind order."""
    names = list(KINDS) if kinds is None else list(kinds)
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise BenchmarkError(f"unknown action kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if len(set(names)) != len(names):
        raise BenchmarkError(f"action kinds listed twice: {', '.join(names)}")
    return {label: (KINDS[name], position == 1) for name in names for position, label in enumerate(KINDS[name].classes)}


def action_progress(rng: np.random.Generator, num_frames: int, fraction: tuple[float, float]) -> np.ndarray:
    """0 before a randomly placed action, 1 after it, a smooth ramp in between.

    The ramp f satisfies f(1 - x) = 1 - f(x) and the start is uniform over the possible starts, so the reversed
    timeline 1 - p(T - 1 - t) has the same distribution: neither timing nor easing gives the direction away.
    """
    duration = max(2, round(rng.uniform(*fraction) * (num_frames - 1)))
    duration = min(duration, num_frames - 1)
    start = rng.integers(0, num_frames - duration)
    x = np.clip((np.arange(num_frames) - start) / duration, 0.0, 1.0)
    smooth = rng.uniform(0.0, 1.0)  # blend of a constant-speed and an ease-in-out ramp
    return ((1 - smooth) * x + smooth * x * x * (3 - 2 * x)).astype(np.float32)


def distractors(stage: Stage, max_count: int) -> tuple[list[ObjectTrack], list[ObjectTrack]]:
    """Small objects drifting at constant random velocity and spin (isotropic, so symmetric in time).
    Returns those behind and those in front of the action."""
    rng = stage.rng
    t = np.arange(stage.num_frames, dtype=np.float32) - (stage.num_frames - 1) / 2  # time around the middle
    behind, front = [], []
    for _ in range(rng.integers(0, max_count + 1)):
        middle = np.array([rng.uniform(0, stage.width), rng.uniform(0, stage.height)], dtype=np.float32)
        heading = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.0, 0.6) * stage.scale / max(1, stage.num_frames - 1)
        velocity = speed * np.array([np.cos(heading), np.sin(heading)], dtype=np.float32)
        spin = rng.uniform(-np.pi / 2, np.pi / 2) / max(1, stage.num_frames - 1)
        size = rng.uniform(0.04, 0.08) * stage.scale
        track = ObjectTrack(
            shape=stage.shape(),
            centre=(middle + t[:, None] * velocity).astype(np.float32),
            half_size=np.tile(np.array([size, size * rng.uniform(0.6, 1.0)], np.float32), (stage.num_frames, 1)),
            angle=(rng.uniform(0, 2 * np.pi) + spin * t).astype(np.float32),
            opacity=np.ones(stage.num_frames, np.float32),
            colour=stage.colour(),
        )
        (behind if rng.random() < 0.7 else front).append(track)
    return behind, front


def render_clip(
    label: str,
    rng: np.random.Generator,
    num_frames: int = 32,
    size: tuple[int, int] = (112, 112),
    scene: SceneConfig | None = None,
    kinds: tuple[str, ...] | list[str] | None = None,
) -> RenderedClip:
    """Render one clip of class ``label`` (``size`` is width, height). A mirrored class's clip is the forward
    process drawn with the same random draws, then reversed frame by frame."""
    table = class_table(kinds)
    if label not in table:
        raise BenchmarkError(f"unknown class {label!r}; choose from {', '.join(table)}")
    kind, backwards = table[label]
    scene = scene or SceneConfig()
    scene.check()
    width, height = size
    jitter = scene.camera_jitter * min(width, height) / 112
    margin = int(np.ceil(4 * jitter)) + 1
    background = textured_background(
        rng, height + 2 * margin, width + 2 * margin, scene.texture_contrast, scene.texture_noise
    )
    timeline = action_progress(rng, num_frames, scene.action_fraction)
    stage = Stage(rng, width, height, timeline, kind.hue, scene.hue_spread)
    action: Action = kind.process(stage)
    behind, front = distractors(stage, scene.max_distractors)
    shake = np.clip(np.rint(stationary_noise(rng, num_frames, smooth=2.0, channels=2) * jitter), -margin, margin)
    shake = shake.astype(np.int64)

    # The camera moves, the world does not: look at world pixels shifted by this frame's camera offset.
    rows = np.arange(height)[None, :, None] + shake[:, 1, None, None]
    cols = np.arange(width)[None, None, :] + shake[:, 0, None, None]
    canvas = background[rows + margin, cols + margin]  # (T, H, W, 3)
    ys = np.broadcast_to(rows + np.float32(0.5), (num_frames, height, width)).astype(np.float32)
    xs = np.broadcast_to(cols + np.float32(0.5), (num_frames, height, width)).astype(np.float32)
    for track in [*behind, *action.layers, *front]:
        composite(canvas, track, xs, ys)
    # Light from the right (+-20 degrees), fixed to the world: an object's shade tells where it is, a cue that
    # survives backbones whose tokens barely encode their position (e.g. randomly initialised ViTs).
    light = rng.uniform(-np.pi / 9, np.pi / 9)
    across = (xs / width - 0.5) * np.cos(light) + (ys / height - 0.5) * np.sin(light)
    canvas *= (1.0 + 2 * scene.lighting * across)[..., None]
    frames = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    if backwards:
        return RenderedClip(label, frames[::-1].copy(), action.main.reversed(), stage.progress[::-1].copy())
    return RenderedClip(label, frames, action.main, stage.progress)
