"""Where extraction's main thread spends its time: a cProfile of ``step_cache.extract`` (main thread only; decode
workers are other processes and the shard writer another thread), split into the backbone call, waiting for
decoded videos, shard writes (appends, publishing: fsync and sha256) and the rest (batching, copies, bookkeeping).

    python bench/extract_profile.py --backbone vit-tiny --videos 24

Videos as in bench/extract.py (moving squares, 360x480, 120 frames, H.264 crf 18); random weights, T = 16.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

from extract import make_videos  # bench/extract.py (bench/ is on the path of a bench script)

from step_cache import extract

# (label, file fragment, function name): the profile's cumulative time of each, in the main thread
PARTS = [
    ("backbone call", "backbones.py", "forward_tokens"),
    ("waiting for decoded videos", "connection.py", "wait"),
    ("shard appends", "shard_file.py", "append_video"),
    ("shard publish (fsync, sha256)", "shard_file.py", "finish"),
]


def cumulative(stats: pstats.Stats, fragment: str, name: str) -> float:
    return sum(entry[3] for (path, _, function), entry in stats.stats.items() if fragment in path and function == name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit-tiny")
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_videos(root / "videos", args.videos, 120, (360, 480))
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        report = extract(root / "videos", root / "shards", backbone=args.backbone, weights="random",
                         frames=args.frames, progress=False)  # fmt: skip
        profile.disable()
        wall = time.perf_counter() - started
    stats = pstats.Stats(profile)
    print(f"{args.backbone}: {report.frames} frames, {wall:.1f} s wall, {report.frames_per_second:.1f} frames/s, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    accounted = 0.0
    for label, fragment, name in PARTS:
        seconds = cumulative(stats, fragment, name)
        accounted += seconds
        print(f"  {label:<32}{seconds:8.2f} s  {100 * seconds / wall:5.1f} %")
    rest = wall - accounted
    print(f"  {'rest of the main thread':<32}{rest:8.2f} s  {100 * rest / wall:5.1f} %")


if __name__ == "__main__":
    main()
