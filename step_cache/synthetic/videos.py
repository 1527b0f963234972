"""Small generated videos (moving shapes) written with PyAV, for tests and the offline demo.

Only *encoding* happens here; reading goes through the decoder backends (``step_cache.extraction.decoders``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25, crf: int = 10, codec: str = "libx264") -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB into an mp4/avi/mkv file.

    ``crf`` is x264's constant rate factor: low values are near-lossless. Keep it low for order-sensitive data,
    because x264 quality decays after each key frame and would otherwise tell an order-blind probe which frame
    came first. Import ``av`` before ``decord`` in a process that writes VP9: decord's bundled FFmpeg, when loaded
    first, makes libvpx-vp9 fail to open (H.264 is unaffected).
    """
    import av  # imported lazily: only generating videos needs PyAV

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 with yuv420p needs even frame sizes, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def moving_square(
    num_frames: int = 24,
    size: tuple[int, int] = (64, 80),
    direction: int = 1,
    color: tuple[int, int, int] = (230, 40, 40),
    seed: int = 0,
) -> np.ndarray:
    """A square sliding horizontally (``direction`` +1: left to right, -1: right to left) over light noise."""
    rng = np.random.default_rng(seed)
    height, width = size
    side = max(4, height // 4)
    background = rng.integers(60, 120, size=(height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    top = (height - side) // 2
    for t in range(num_frames):
        progress = t / max(1, num_frames - 1)
        if direction < 0:
            progress = 1.0 - progress
        left = round(progress * (width - side))
        frames[t, top : top + side, left : left + side] = color
    return frames


def write_class_folders(
    root: str | Path,
    classes: dict[str, int] | None = None,
    videos_per_class: int = 3,
    num_frames: int = 24,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
) -> list[Path]:
    """Write ``root/<class>/<class>_<i>.mp4`` with squares sliding right (direction 1) or left (-1).

    ``classes`` maps class name to direction; the default is two mirrored classes.
    """
    classes = classes or {"slide_right": 1, "slide_left": -1}
    paths = []
    for class_index, (name, direction) in enumerate(sorted(classes.items())):
        for i in range(videos_per_class):
            frames = moving_square(num_frames, size, direction, seed=seed + 1000 * class_index + i)
            paths.append(write_video(Path(root) / name / f"{name}_{i}.mp4", frames))
    return paths
