"""The benchmark's actions: each *kind* is one random visual process.

A mirrored kind gives two classes: its first class is the process played forwards, its second the very same
process played backwards (the frames are rendered once and reversed), so both classes have identical frame
distributions and only the order tells them apart. An order-free kind (shaking, blinking) has no direction at all.

Processes are written for the forward class and follow ``Stage.progress``, the action's timeline: 0 before the
action starts, rising smoothly to 1 when it ends (still frames on both sides).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from step_cache.demo_dataset.drawing import SHAPES, ObjectTrack, constant, hsv_colour, place, stationary_noise


@dataclass
class Stage:
    """What a process may use: the random source, the frame size and the action's timeline."""

    rng: np.random.Generator
    width: int
    height: int
    progress: np.ndarray  # (T,), 0 -> 1
    hue: float = 0.0  # the kind's hue (0..1 around the colour wheel); actors keep near it
    hue_spread: float = 0.5  # actors' hue is uniform in hue +- hue_spread (0.5: any hue)

    @property
    def num_frames(self) -> int:
        return len(self.progress)

    @property
    def scale(self) -> float:
        return float(min(self.width, self.height))

    def actor_colour(self) -> np.ndarray:
        """A vivid colour near the kind's hue: it stands out from the greyish background, and a frozen random
        backbone maps it to similar features in every clip, which is what lets a probe follow the actor."""
        hue = self.hue + self.rng.uniform(-self.hue_spread, self.hue_spread)
        return hsv_colour(hue, self.rng.uniform(0.65, 1.0), self.rng.uniform(0.55, 0.7))

    def colour(self) -> np.ndarray:
        """Any hue, medium saturation and brightness: for distractors and details."""
        return hsv_colour(self.rng.uniform(0, 1), self.rng.uniform(0.3, 0.9), self.rng.uniform(0.45, 0.95))

    def dark_colour(self) -> np.ndarray:
        """A dark, dull colour: doorways, dials, shadows."""
        return hsv_colour(self.rng.uniform(0, 1), self.rng.uniform(0.0, 0.5), self.rng.uniform(0.08, 0.25))

    def shape(self) -> str:
        return str(self.rng.choice(SHAPES))

    def position(self, margin_x: float, margin_y: float | None = None) -> np.ndarray:
        """A random point at least ``margin`` pixels inside the frame (the centre if the margin is too big)."""
        margin_y = margin_x if margin_y is None else margin_y
        return np.array(
            [_between(self.rng, margin_x, self.width - margin_x), _between(self.rng, margin_y, self.height - margin_y)],
            dtype=np.float32,
        )

    def actor(self, centre, half_size, angle, opacity=1.0, shape: str | None = None, colour=None) -> ObjectTrack:
        """A main object: per-frame arrays or constants, a random shape and colour, and random stripes."""
        t = self.num_frames
        return ObjectTrack(
            shape=shape or self.shape(),
            centre=_frames(centre, t, 2),
            half_size=_frames(half_size, t, 2),
            angle=_frames(angle, t, 1),
            opacity=_frames(opacity, t, 1),
            colour=self.actor_colour() if colour is None else colour,
            stripe_contrast=float(self.rng.uniform(0.0, 0.3)),
            stripe_period=float(self.rng.uniform(0.08, 0.16) * self.scale),
        )


@dataclass(frozen=True)
class Action:
    layers: list[ObjectTrack]  # back to front
    main: ObjectTrack  # the object whose motion defines the class (for tests and inspection)


@dataclass(frozen=True)
class Kind:
    name: str
    classes: tuple[str, ...]  # (forward, backward) for a mirrored kind, (name,) for an order-free one
    process: Callable[[Stage], Action]
    description: str
    hue: float  # actors' base hue; kinds differ, the two classes of a pair share it (no per-frame hint)

    @property
    def mirrored(self) -> bool:
        return len(self.classes) == 2


def _between(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high)) if high > low else (low + high) / 2


def _frames(value, num_frames: int, width: int) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)
    expected = (num_frames, width) if width > 1 else (num_frames,)
    return value if value.shape == expected else np.broadcast_to(value, expected).astype(np.float32)


def _half_size(rng: np.random.Generator, size: float, max_aspect: float = 1.4) -> np.ndarray:
    aspect = rng.uniform(1 / max_aspect, max_aspect)
    return np.array([size * np.sqrt(aspect), size / np.sqrt(aspect)], dtype=np.float32)


def slide(stage: Stage) -> Action:
    """An object travelling 45-65 % of the frame width to the right (give or take 25 degrees)."""
    rng = stage.rng
    half = _half_size(rng, rng.uniform(0.11, 0.17) * stage.scale)
    heading = rng.uniform(-np.pi / 7, np.pi / 7)
    direction = np.array([np.cos(heading), np.sin(heading)], dtype=np.float32)
    distance = rng.uniform(0.45, 0.65) * stage.width
    margin = 0.9 * half.max()
    middle = stage.position(margin + distance * abs(direction[0]) / 2, margin + distance * abs(direction[1]) / 2)
    start = middle - direction * distance / 2
    centre = start + stage.progress[:, None] * direction * distance
    actor = stage.actor(centre, half, rng.uniform(0, 2 * np.pi))
    return Action([actor], actor)


def hinge(stage: Stage) -> Action:
    """A door (or lid) swinging open on a hinge: the panel narrows as it turns, its free edge grows towards the
    camera, and the dark doorway behind it appears."""
    rng = stage.rng
    t = stage.num_frames
    height = rng.uniform(0.5, 0.72) * stage.scale
    width = rng.uniform(0.5, 0.8) * height
    orientation = rng.integers(4) * np.pi / 2  # hinge on the left, top, right or bottom
    extent = np.array([width, height]) / 2 if orientation % np.pi == 0 else np.array([height, width]) / 2
    centre = constant(stage.position(extent[0] + 2, extent[1] + 2), t)
    angle = constant(orientation, t)
    doorway = ObjectTrack(
        "box",
        centre,
        constant([width / 2, height / 2], t),
        angle,
        constant(1.0, t),
        stage.dark_colour(),
    )
    swing = stage.progress * rng.uniform(np.radians(60), np.radians(85))
    hinge_u = -width / 2
    free_u = hinge_u + width * np.cos(swing)
    free_half = height / 2 * (1 + 0.22 * np.sin(swing))  # the free edge comes closer: slight perspective
    local = np.stack(
        [
            np.stack([np.full(t, hinge_u), -np.full(t, height / 2)], -1),
            np.stack([free_u, -free_half], -1),
            np.stack([free_u, free_half], -1),
            np.stack([np.full(t, hinge_u), np.full(t, height / 2)], -1),
        ],
        axis=1,
    ).astype(np.float32)
    vertices = place(local, centre, angle)
    middle = place(np.stack([(hinge_u + free_u) / 2, np.zeros(t)], -1)[:, None].astype(np.float32), centre, angle)
    panel = stage.actor(
        middle[:, 0],
        np.stack([(free_u - hinge_u) / 2, np.full(t, height / 2)], -1),
        angle,
        shape="box",
    )
    panel = replace(panel, vertices=vertices)
    knob_u = free_u - 0.12 * width * np.cos(swing)
    knob_centre = place(np.stack([knob_u, np.zeros(t)], -1)[:, None].astype(np.float32), centre, angle)[:, 0]
    knob = ObjectTrack(
        "ellipse", knob_centre, constant([0.06 * height] * 2, t), angle, constant(1.0, t), stage.colour()
    )
    return Action([doorway, panel, knob], panel)


def rotate(stage: Stage) -> Action:
    """A clock hand sweeping clockwise over the top of a dial, from about 9 to about 3 o'clock, so that it
    travels rightwards, a direction that the scene's lighting makes visible even to position-blind features."""
    rng = stage.rng
    t = stage.num_frames
    radius = rng.uniform(0.32, 0.42) * stage.scale
    pivot = constant(stage.position(radius + 1), t)
    dial = ObjectTrack(
        "ellipse", pivot, constant([radius, radius], t), constant(0.0, t), constant(1.0, t), stage.dark_colour()
    )
    length = radius * rng.uniform(0.85, 0.95)
    thickness = radius * rng.uniform(0.16, 0.22)  # half-thickness: a broad hand spans whole ViT patches
    start = np.pi + rng.uniform(-np.radians(20), np.radians(20))  # 9 o'clock; y points down, so angles grow clockwise
    theta = start + stage.progress * rng.uniform(np.radians(140), np.radians(200))
    tip = np.stack([np.cos(theta), np.sin(theta)], -1).astype(np.float32)
    hand_colour = stage.actor_colour()
    hand = stage.actor(
        pivot + tip * length / 2,
        np.stack([np.full(t, length / 2), np.full(t, thickness)], -1),
        theta,
        shape="box",
        colour=hand_colour,
    )
    cap = ObjectTrack(
        "ellipse", pivot, constant([1.4 * thickness] * 2, t), constant(0.0, t), constant(1.0, t), hand_colour
    )
    return Action([dial, hand, cap], hand)


def fade(stage: Stage) -> Action:
    """A large object fading in from transparent to opaque where it stands."""
    rng = stage.rng
    half = _half_size(rng, rng.uniform(0.16, 0.26) * stage.scale)
    actor = stage.actor(stage.position(half.max()), half, rng.uniform(0, 2 * np.pi), opacity=stage.progress)
    return Action([actor], actor)


def approach(stage: Stage) -> Action:
    """An object coming towards the camera: it grows 2.5-3.5 times and moves down the frame as on a ground
    plane, its shadow with it."""
    rng = stage.rng
    t = stage.num_frames
    size_start = rng.uniform(0.06, 0.09) * stage.scale
    growth = min(rng.uniform(2.5, 3.5), 0.3 * stage.scale / size_start)
    size = size_start * growth**stage.progress  # geometric growth: the size goes as 1 / distance
    size_end = size_start * growth
    drop = rng.uniform(0.12, 0.22) * stage.height
    x = _between(rng, size_end + 1, stage.width - size_end - 1)
    y0 = _between(rng, size_start + 1, stage.height - size_end * 1.2 - drop)
    centre = np.stack([np.full(t, x), y0 + drop * stage.progress], -1).astype(np.float32)
    aspect = _half_size(rng, 1.0)
    actor = stage.actor(centre, size[:, None] * aspect, rng.uniform(0, 2 * np.pi))
    shadow_centre = centre + np.stack([np.zeros(t), size * aspect.max()], -1)
    shadow = ObjectTrack(
        "ellipse",
        shadow_centre.astype(np.float32),
        np.stack([1.1 * size, 0.25 * size], -1).astype(np.float32),
        constant(0.0, t),
        constant(0.5, t),
        np.full(3, 20.0),
    )
    return Action([shadow, actor], actor)


def shake(stage: Stage) -> Action:
    """Order-free: an object shaking and wobbling in place (stationary noise, the same played backwards)."""
    rng = stage.rng
    half = _half_size(rng, rng.uniform(0.14, 0.22) * stage.scale)
    amplitude = rng.uniform(0.03, 0.06) * stage.scale
    noise = stationary_noise(rng, stage.num_frames, smooth=rng.uniform(0.7, 1.5), channels=3)
    centre = stage.position(half.max() + 2 * amplitude) + amplitude * noise[:, :2]
    angle = rng.uniform(0, 2 * np.pi) + rng.uniform(np.radians(5), np.radians(15)) * noise[:, 2]
    actor = stage.actor(centre, half, angle)
    return Action([actor], actor)


def blink(stage: Stage) -> Action:
    """Order-free: an object switching on and off at random (a symmetric two-state Markov chain started in its
    stationary distribution, which is time-reversible)."""
    rng = stage.rng
    half = _half_size(rng, rng.uniform(0.14, 0.22) * stage.scale)
    switches = rng.random(stage.num_frames) < rng.uniform(0.12, 0.3)
    switches[0] = rng.random() < 0.5  # the first state: on or off with equal chance
    visible = np.cumsum(switches) % 2 == 1
    opacity = np.where(visible, 1.0, rng.uniform(0.0, 0.25))
    actor = stage.actor(stage.position(half.max()), half, rng.uniform(0, 2 * np.pi), opacity=opacity)
    return Action([actor], actor)


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("slide", ("slide_right", "slide_left"), slide, "an object sliding across the frame", 0.0),
        Kind("hinge", ("open", "close"), hinge, "a door or lid swinging on its hinge", 0.6),
        Kind("rotate", ("rotate_cw", "rotate_ccw"), rotate, "a clock hand turning", 0.13),
        Kind("fade", ("fade_in", "fade_out"), fade, "an object fading in or out", 0.33),
        Kind("approach", ("approach", "recede"), approach, "an object coming closer or moving away", 0.8),
        Kind("shake", ("shake",), shake, "an object shaking in place (order-free)", 0.5),
        Kind("blink", ("blink",), blink, "an object blinking on and off (order-free)", 0.7),
    )
}
DEFAULT_KINDS = ("slide", "hinge", "rotate", "fade", "approach", "shake")
