"""What test views (``extract --test-views SxC``) cost the decode workers, per val/test video: the pixels of S
segments x C crops (the anchor's short-side resize, OpenCV's INTER_LINEAR arithmetic in numpy, and the crops) against
today's K = S clips through the backbone's PIL resize and centre crop. Both on the same decoded frames, in one
process, alternating; prints the median times and their ratio. The backbone then sees C times the frames: its cost
grows by C exactly (docs/performance.md).

    python bench/test_views.py [--height 360 --width 480 --frames 16 --segments 2 --crops 3 --side 224 --repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from step_cache.extraction.preprocess import Preprocessing
from step_cache.extraction.test_views import view_pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--crops", type=int, default=3)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.segments * args.frames, args.height, args.width, 3), dtype=np.uint8)
    # DINOv2's timm eval transform: bicubic, resize to 256 then centre crop 224
    centre = Preprocessing(args.side, round(args.side / 0.875), "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    timings: dict[str, list[float]] = {"centre crop (today)": [], f"{args.crops} crops (test views)": []}
    for _ in range(args.repeats):
        for name, make in zip(
            timings,
            (lambda: centre.resize_and_crop(frames), lambda: view_pixels(frames, args.segments, args.crops, args.side)),
            strict=True,
        ):
            start = time.perf_counter()
            make()
            timings[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    for name, value in medians.items():
        print(f"{name:24s} {1e3 * value:8.1f} ms for {len(frames)} frames of {args.height}x{args.width}")
    base, views = medians.values()
    print(f"ratio test views / centre crop: {views / base:.2f}")


if __name__ == "__main__":
    main()
