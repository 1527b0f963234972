"""What ``train-probe --seeds N`` costs against one seed (docs/performance.md, "Seeds").

Writes a synthetic token cache (D, tokens per frame and T like a ViT-Ti/16 at 112 px by default), then times
``train_probe`` with seeds 1, 3 and 5 (the seeds are members of one stacked batch) and prints wall time and
training time as ratios of one seed (the fastest of ``--repeat`` interleaved rounds). A first run warms up
(imports, allocator).

    python bench/seeds.py [--probe step] [--videos 64] [--epochs 5] [--dim 192] [--grid 7] [--frames 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.trainer import train_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", default="step")
    parser.add_argument("--videos", type=int, default=64, help="videos per class (4 classes)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--grid", type=int, default=7, help="patches per side (7: 112 px at patch 16)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--repeat", type=int, default=2, help="rounds over --seeds; the fastest of each counts")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        cache = Path(work) / "cache"
        write_token_cache(
            cache, num_classes=4, videos_per_class=args.videos, frames=args.frames, grid=(args.grid, args.grid),
            dim=args.dim, val_every=5, test_every=6,
        )  # fmt: skip
        common = {"epochs": args.epochs, "batch_size": args.batch_size, "progress": False, "data": "memory",
                  "device": args.device}  # fmt: skip
        train_probe(cache, args.probe, Path(work) / "warm", **{**common, "epochs": 1})
        times: dict[int, list[tuple[float, float]]] = {seeds: [] for seeds in args.seeds}
        for round_ in range(args.repeat):  # interleaved rounds: a busy machine slows every setting alike
            for seeds in args.seeds:
                start = time.perf_counter()
                out = Path(work) / f"run-{round_}-{seeds}"
                result = train_probe(cache, args.probe, out, seeds=seeds, **common)
                times[seeds].append((time.perf_counter() - start, result.metrics["train_time_s"]))
        rows = [(seeds, *min(times[seeds])) for seeds in args.seeds]
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(
        f"{args.probe}: {4 * args.videos} videos, T={args.frames}, {args.grid**2 + 1} tokens/frame, D={args.dim}, "
        f"{args.epochs} epochs at batch {args.batch_size}; device {device}, {torch.get_num_threads()} threads"
    )
    print("| seeds | wall s | wall / 1 seed | training s | training / 1 seed |")
    print("|---:|---:|---:|---:|---:|")
    base_wall, base_train = rows[0][1], rows[0][2]
    for seeds, wall, train in rows:
        print(f"| {seeds} | {wall:.1f} | {wall / base_wall:.2f} | {train:.1f} | {train / base_train:.2f} |")


if __name__ == "__main__":
    main()
