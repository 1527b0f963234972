"""Vectorised drawing of the benchmark's scenes: shapes as per-frame tracks, rasterised for all frames at once.

Every array with a leading ``T`` axis holds one value per frame. Coordinates are in pixels of the *world* (the
scene before camera jitter); ``x`` grows rightwards and ``y`` downwards, so a growing angle turns clockwise on
screen. Edges are anti-aliased (coverage from a signed distance) so that sub-pixel motion stays smooth.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace

import numpy as np

SHAPES = ("ellipse", "box", "triangle")


@dataclass(frozen=True)
class ObjectTrack:
    """One drawn object over ``T`` frames.

    ``centre`` (T, 2), ``half_size`` (T, 2) and ``angle`` (T,) place the object and its stripe pattern;
    ``vertices`` (T, K, 2), when given, replaces the shape by that convex polygon (e.g. a door panel).
    """

    shape: str
    centre: np.ndarray
    half_size: np.ndarray
    angle: np.ndarray
    opacity: np.ndarray
    colour: np.ndarray  # (3,) in 0..255
    stripe_contrast: float = 0.0
    stripe_period: float = 8.0
    vertices: np.ndarray | None = None

    def reversed(self) -> ObjectTrack:
        """The same object with time running backwards."""
        flip = {name: getattr(self, name)[::-1].copy() for name in ("centre", "half_size", "angle", "opacity")}
        if self.vertices is not None:
            flip["vertices"] = self.vertices[::-1].copy()
        return replace(self, **flip)


def constant(value: float | np.ndarray, num_frames: int) -> np.ndarray:
    """Repeat a scalar or vector ``value`` over ``num_frames`` frames (float32)."""
    value = np.asarray(value, dtype=np.float32)
    return np.repeat(value[None], num_frames, axis=0)


def box_vertices(centre: np.ndarray, half_size: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Corners (T, 4, 2) of rotated rectangles."""
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float32)
    return place(local[None] * half_size[:, None, :], centre, angle)


def triangle_vertices(centre: np.ndarray, half_size: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Corners (T, 3, 2) of isosceles triangles pointing along ``angle`` (so their heading is visible)."""
    local = np.array([[1, 0], [-1, -1], [-1, 1]], dtype=np.float32)
    return place(local[None] * half_size[:, None, :], centre, angle)


def place(local: np.ndarray, centre: np.ndarray, angle: np.ndarray) -> np.ndarray:
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return np.stack([x, y], axis=-1) + centre[:, None, :]


def _local_coords(xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, angle: np.ndarray):
    """Pixel coordinates (T, H, W) expressed in each frame's object frame (u along ``angle``, v across)."""
    dx = xs - centre[:, 0, None, None]
    dy = ys - centre[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _polygon_distance(xs: np.ndarray, ys: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) to convex polygons, exact inside and near the edges."""
    nxt = np.roll(vertices, -1, axis=1)
    edge = nxt - vertices  # (T, K, 2)
    length = np.linalg.norm(edge, axis=-1)
    # Shoelace area: its sign tells the winding, so outward normals point the right way for either order.
    area = np.sum(vertices[..., 0] * nxt[..., 1] - nxt[..., 0] * vertices[..., 1], axis=1)
    sign = np.where(area >= 0, 1.0, -1.0).astype(np.float32)
    distance = np.full(xs.shape, -np.inf, dtype=np.float32)
    for k in range(vertices.shape[1]):  # a handful of edges; each step is vectorised over frames and pixels
        ok = length[:, k] > 1e-6
        nx = np.where(ok, edge[:, k, 1] / np.maximum(length[:, k], 1e-6), 0.0) * sign
        ny = np.where(ok, -edge[:, k, 0] / np.maximum(length[:, k], 1e-6), 0.0) * sign
        d = (xs - vertices[:, k, 0, None, None]) * nx[:, None, None] + (ys - vertices[:, k, 1, None, None]) * ny[
            :, None, None
        ]
        d = np.where(ok[:, None, None], d, -np.inf)
        np.maximum(distance, d, out=distance)
    return distance


def coverage(track: ObjectTrack, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (T, H, W) in [0, 1] of ``track`` at world pixel centres ``xs``, ``ys`` (T, H, W)."""
    if track.vertices is not None:
        distance = _polygon_distance(xs, ys, track.vertices)
    elif track.shape == "ellipse":
        u, v = _local_coords(xs, ys, track.centre, track.angle)
        a = np.maximum(track.half_size[:, 0, None, None], 0.5)
        b = np.maximum(track.half_size[:, 1, None, None], 0.5)
        distance = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * np.minimum(a, b)
    elif track.shape == "box":
        distance = _polygon_distance(xs, ys, box_vertices(track.centre, track.half_size, track.angle))
    elif track.shape == "triangle":
        distance = _polygon_distance(xs, ys, triangle_vertices(track.centre, track.half_size, track.angle))
    else:
        raise ValueError(f"unknown shape {track.shape!r}; expected one of {', '.join(SHAPES)} or vertices")
    return np.clip(0.5 - distance, 0.0, 1.0, out=distance)


def extent(track: ObjectTrack) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box (x0, y0), (x1, y1) of ``track`` over all its frames."""
    if track.vertices is not None:
        points = track.vertices.reshape(-1, 2)
        return points.min(axis=0), points.max(axis=0)
    reach = np.linalg.norm(track.half_size, axis=1, keepdims=True)  # bounds every shape whatever its angle
    return (track.centre - reach).min(axis=0), (track.centre + reach).max(axis=0)


def composite(canvas: np.ndarray, track: ObjectTrack, xs: np.ndarray, ys: np.ndarray) -> None:
    """Paint ``track`` over ``canvas`` (T, H, W, 3) float32, in place.

    Only the screen window that the object can reach in any frame is computed (camera offsets included), which
    makes small or still objects cheap.
    """
    low, high = extent(track)
    origin_x, origin_y = xs[:, 0, 0] - 0.5, ys[:, 0, 0] - 0.5  # world position of screen pixel (0, 0) per frame
    c0 = max(0, int(np.floor(low[0] - origin_x.max())) - 1)
    c1 = min(canvas.shape[2], int(np.ceil(high[0] - origin_x.min())) + 2)
    r0 = max(0, int(np.floor(low[1] - origin_y.max())) - 1)
    r1 = min(canvas.shape[1], int(np.ceil(high[1] - origin_y.min())) + 2)
    if c0 >= c1 or r0 >= r1:
        return  # off screen in every frame
    canvas, xs, ys = canvas[:, r0:r1, c0:c1], xs[:, r0:r1, c0:c1], ys[:, r0:r1, c0:c1]
    alpha = coverage(track, xs, ys) * track.opacity[:, None, None]
    fill = track.colour.astype(np.float32)
    if track.stripe_contrast:
        # Stripes fixed to the object make its turning and sliding visible even on symmetric shapes.
        u, _ = _local_coords(xs, ys, track.centre, track.angle)
        fill = fill * (1.0 + track.stripe_contrast * np.sin(2 * np.pi * u / track.stripe_period))[..., None]
    canvas += alpha[..., None] * (fill - canvas)


def stationary_noise(rng: np.random.Generator, num_frames: int, smooth: float, channels: int = 1) -> np.ndarray:
    """Smooth Gaussian noise (T, channels) with unit variance, stationary and hence time-reversible in
    distribution: the same process played backwards is equally likely, so it never hints at the clip's order."""
    radius = max(1, int(np.ceil(3 * smooth)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(smooth, 1e-3)) ** 2)
    kernel /= np.sqrt(np.sum(kernel**2))
    white = rng.standard_normal((num_frames + 2 * radius, channels))
    smoothed = np.stack([np.convolve(white[:, c], kernel, mode="valid") for c in range(channels)], axis=1)
    return smoothed.astype(np.float32)


def hsv_colour(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB (3,) in 0..255 from HSV in 0..1 (the hue wraps around)."""
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32) * 255


def textured_background(rng: np.random.Generator, height: int, width: int, contrast: float, noise: float) -> np.ndarray:
    """A static textured image (H, W, 3) float32: oriented gratings and soft blobs blending two dull colours of
    similar hue (so vivid actors stand out), plus fine grain."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(height, width)
    pattern = np.zeros((height, width), dtype=np.float32)
    for _ in range(3):
        theta = rng.uniform(0, np.pi)
        wavelength = rng.uniform(0.08, 0.5) * scale
        phase = rng.uniform(0, 2 * np.pi)
        pattern += np.sin(2 * np.pi * (xs * np.cos(theta) + ys * np.sin(theta)) / wavelength + phase)
    for _ in range(rng.integers(2, 5)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.1, 0.35) * scale
        pattern += 2.0 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2)) * rng.choice([-1.0, 1.0])
    pattern = 0.5 + 0.5 * np.tanh(pattern / 2.0)
    hue, value = rng.uniform(0, 1), rng.uniform(0.3, 0.6)
    shift = contrast * rng.uniform(0.5, 1.0)
    base = hsv_colour(hue, rng.uniform(0.0, 0.35), value - 0.2 * shift)
    other = hsv_colour(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.0, 0.45), value + 0.25 * shift)
    image = base + pattern[..., None] * (other - base)
    image += rng.normal(0, noise, size=image.shape)
    return image.astype(np.float32)
