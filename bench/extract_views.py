"""Extraction cost of augmented views (``extract --views N``) against re-running the backbone every epoch.

For each N it extracts the same generated demo into a fresh cache and prints the wall time, the frames that went
through the backbone, and the bytes stored per training video; then the frames V-JEPA's frozen-evaluation protocol
would push through the backbone (a new augmented clip of every training video every epoch: epochs x training
videos x T), and the time that would take at the backbone speed measured in the N = 0 run.

    python bench/extract_views.py --per-class 5 --views 0,2,4 --epochs 100
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from step_cache import extract, open_shards
from step_cache.demo_dataset.dataset import make_demo_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--views", default="0,2,4")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--backbone", default="vit-tiny")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = make_demo_dataset(root / "demo", per_class=args.per_class, progress=False)
        annotations = demo.annotations_path
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(
            "| --views | wall s | frames through backbone | frames/s | bytes per training video "
            "| bytes per val/test video |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        speed = None
        train_videos = 0
        for views in (int(v) for v in args.views.split(",")):
            out = root / f"cache{views}"
            started = time.perf_counter()
            report = extract(
                None, out, annotations=annotations, backbone=args.backbone, weights="random", frames=args.frames,
                image_size=args.image_size, views=views, workers=args.workers, progress=False,
            )  # fmt: skip
            wall = time.perf_counter() - started
            with open_shards(out) as shards:
                row_bytes = sum(r.bytes for r in shards.manifest.shards) / len(shards)
                train = np.isin(shards.splits, ["train", ""])
                train_videos = len(set(shards.videos[train]))
                other_videos = len(set(shards.videos[~train]))
                per_train = row_bytes * train.sum() / max(1, train_videos)
                per_other = row_bytes * (~train).sum() / max(1, other_videos)
            if views == 0:
                speed = report.frames / wall
            print(
                f"| {views} | {wall:.1f} | {report.frames} | {report.frames / wall:.1f} | "
                f"{per_train / 2**10:.0f} KiB | {per_other / 2**10:.0f} KiB |"
            )
        frames = args.epochs * train_videos * args.frames
        print(
            f"V-JEPA-style, {args.epochs} epochs x {train_videos} training videos x T = {args.frames}: {frames} "
            f"frames through the backbone" + (f", ~{frames / speed:.0f} s at {speed:.1f} frames/s" if speed else "")
        )
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
