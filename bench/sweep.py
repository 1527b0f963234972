"""Sweep benchmark: what does training K probe configurations cost, alone, one after another, and stacked?

Writes a synthetic cache at a realistic shape (default T=8 frames, 1 CLS + 7x7 patches = 50 tokens per frame,
D=192; ``--grid 14`` gives ViT-S/14-like 197 tokens), then times, with the same epochs and data:

  one probe        ``train_probe`` of one configuration (the train-probe code path)
  K sequential     ``train_probe`` of K configurations one after another (what K train-probe runs cost)
  K in one batch   ``train_stacked`` of the same K configurations (what a sweep batch costs)

and prints wall time (the whole call: loading the cache, training, per-epoch validation, final order metrics)
and train-loop time (forward + backward + optimizer steps only) of each, and the ratios. The K configurations
differ in learning rate, weight decay and dropout, as in a sweep. A short untimed run first warms up torch.

    python bench/sweep.py                                   # step, K=16, T=8, P=50, D=192 on CPU
    python bench/sweep.py --grid 14 --probe attentive --threads 1
    python bench/sweep.py --device cuda --clips 2048 --batch-size 128 --grid 14      # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from step_cache.cache.shards import open_shards
from step_cache.probes import PROBES
from step_cache.synthetic.tokens import SyntheticTokens, write_token_cache
from step_cache.training.config import make_config
from step_cache.training.stacking import train_stacked
from step_cache.training.trainer import train_probe


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", default="step", choices=list(PROBES))
    parser.add_argument("--members", type=int, default=16, help="K: configurations per batch")
    parser.add_argument("--clips", type=int, default=256, help="clips in the synthetic cache (20 %% validate)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--grid", type=int, default=7, help="patch grid side (P = 1 + grid^2)")
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cache", type=Path, default=None, help="reuse/keep the synthetic cache here")
    return parser.parse_args()


def member_options(args: argparse.Namespace, members: int) -> list[dict]:
    """K sweep-like configurations of one shape: lr log-spaced, weight decay and dropout cycling."""
    rates = np.geomspace(1e-4, 3e-3, members)
    return [
        {"lr": float(rate), "weight_decay": (0.0, 0.05, 0.1)[k % 3], "probe_options": {"dropout": (0.0, 0.1)[k % 2]}}
        for k, rate in enumerate(rates)
    ]


def common(args: argparse.Namespace) -> dict:
    return {"epochs": args.epochs, "batch_size": args.batch_size, "device": args.device, "data": "memory",
            "progress": False}  # fmt: skip


def lone_runs(args: argparse.Namespace, cache: Path, work: Path, options: list[dict]) -> tuple[float, float]:
    wall = train = 0.0
    for index, member in enumerate(options):
        started = time.perf_counter()
        result = train_probe(cache, args.probe, work / f"lone-{index}", overwrite=True, **common(args), **member)
        wall += time.perf_counter() - started
        train += result.metrics["train_time_s"]
    return wall, train


def stacked_run(args: argparse.Namespace, cache: Path, options: list[dict]) -> tuple[float, float]:
    configs = [make_config(args.probe, {**common(args), **member}) for member in options]
    started = time.perf_counter()
    results = train_stacked(cache, configs)
    wall = time.perf_counter() - started
    assert all(r.metrics["stacked_members"] == len(options) for r in results)
    return wall, results[0].metrics["train_time_s"]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        cache = args.cache or work / "cache"
        if not (cache / "manifest.json").is_file():
            spec = SyntheticTokens(
                task="static", num_classes=args.classes, videos_per_class=max(1, -(-args.clips // args.classes)),
                frames=args.frames, grid=(args.grid, args.grid), dim=args.dim, clips_per_shard=512,
            )  # fmt: skip
            write_token_cache(cache, spec)
        shards = open_shards(cache)
        options = member_options(args, args.members)
        # Warm-up (torch/dynamo imports on the first optimizer, allocator): not timed.
        train_probe(cache, args.probe, work / "warm", overwrite=True, **{**common(args), "epochs": 1})
        stacked_run(args, cache, options[:2])

        one = lone_runs(args, cache, work, options[:1])
        sequential = lone_runs(args, cache, work, options)
        batch = stacked_run(args, cache, options)

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    k = args.members
    print(
        f"probe {args.probe}: {len(shards)} clips of T={args.frames} x P={1 + args.grid**2} x D={args.dim}, "
        f"batch {args.batch_size}, {args.epochs} epochs, K={k}; device {device} ({name}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'':>18} {'wall s':>9} {'train-loop s':>13}")
    for label, (wall, train) in (("one probe", one), (f"{k} sequential", sequential), (f"{k} in one batch", batch)):
        print(f"{label:>18} {wall:9.2f} {train:13.2f}")
    print(
        f"batch of {k} / one probe: {batch[0] / one[0]:.2f}x wall, {batch[1] / one[1]:.2f}x train loop; "
        f"sequential / batch: {sequential[0] / batch[0]:.2f}x wall, {sequential[1] / batch[1]:.2f}x train loop"
    )


if __name__ == "__main__":
    main()
