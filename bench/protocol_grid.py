"""What training a protocol's grid as one stack saves, on synthetic token caches (note ``uptime`` beside it: the
machine may be shared; the ratios, measured in one process, are the figures to keep):

1. the ``dinov2-linear`` preset's 13 SGD learning rates as one stack (``train_stacked``) against the same 13
   configurations one after another (``train_probe`` each), on a cache without layers;
2. its whole grid, 13 lrs x ``layers`` last / ``concat:last4`` x ``avgpool`` (52 heads), on a cache of 4 stored
   layers: one stack per head width (4 stacks of 13, each reading every batch: how ``sweep --protocol
   dinov2-linear`` trained it before masked nested heads) against the one stack it trains as now
   (``training/stacking/nested.py``). Prints the stacks and the training time per epoch (all stacks' epochs).

    python bench/protocol_grid.py [--dim 384] [--videos 40] [--epochs 10]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import make_config
from step_cache.training.protocols import PROTOCOLS
from step_cache.training.stacking import group_by_shape
from step_cache.training.stacking.stacked_run import train_stacked
from step_cache.training.trainer import train_probe

CACHE = {"task": "static", "num_classes": 4, "val_every": 5, "test_every": 4}


def lr_grid(tmp: Path, args: argparse.Namespace, lrs: tuple[float, ...]) -> None:
    cache = tmp / "cache"
    write_token_cache(cache, **CACHE, videos_per_class=args.videos, dim=args.dim)
    shards = open_shards(cache)
    # one head width: the preset's n_last_blocks = 1 without avgpool (train-probe needs one value of each grid field)
    options = {"protocol": "dinov2-linear", "epochs": args.epochs, "progress": False, "layers": "last"}
    started = time.perf_counter()
    train_stacked(shards, [make_config(None, {**options, "lr": lr}) for lr in lrs])
    stacked = time.perf_counter() - started
    started = time.perf_counter()
    for index, lr in enumerate(lrs):
        train_probe(shards, out=tmp / f"lone-{index}", lr=lr, **options)
    lone = time.perf_counter() - started
    print(f"dinov2-linear lr grid ({len(lrs)} SGD linear probes, D={args.dim}, {args.epochs} epochs of batch 128):")
    print(f"  one stack {stacked:.2f} s | one after another {lone:.2f} s | ratio {lone / stacked:.1f}x")


def whole_grid(tmp: Path, args: argparse.Namespace, lrs: tuple[float, ...]) -> None:
    cache = tmp / "last4"
    write_token_cache(cache, **CACHE, videos_per_class=args.videos, dim=args.dim, layers=(8, 9, 10, 11))
    shards = open_shards(cache)
    kinds = list(itertools.product(("last", "concat:last4"), (False, True)))
    options = {"protocol": "dinov2-linear", "epochs": args.epochs, "progress": False}
    configs = [
        make_config(None, {**options, "lr": lr, "layers": layers, "probe_options": {"avgpool": avgpool}})
        for (layers, avgpool), lr in itertools.product(kinds, lrs)
    ]
    per_width = [configs[k * len(lrs) : (k + 1) * len(lrs)] for k in range(len(kinds))]  # one (layers, avgpool) each
    times = {}
    for name, stacks in (("one stack per head width", per_width), ("one stack", [configs])):
        started, epochs_s = time.perf_counter(), 0.0
        for members in stacks:
            results = train_stacked(shards, members)
            epochs_s += results[0].metrics["train_time_s"] / args.epochs
        times[name] = (len(stacks), time.perf_counter() - started, epochs_s)
    assert len(group_by_shape(configs)) == 1  # what sweep --protocol dinov2-linear trains now
    print(f"dinov2-linear whole grid ({len(configs)} heads: {len(lrs)} lrs x last/concat:last4 x avgpool, D={args.dim},"
          f" 4 stored layers, {args.epochs} epochs):")  # fmt: skip
    for name, (stacks, wall, epoch) in times.items():
        print(f"  {name}: {stacks} stack(s), {epoch:.2f} s per epoch, {wall:.2f} s in all")
    (_, before_wall, before_epoch), (_, after_wall, after_epoch) = times.values()
    ratios = f"{before_epoch / after_epoch:.2f}x per epoch, {before_wall / after_wall:.2f}x in all"
    print(f"  ratio (before / after): {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--videos", type=int, default=40, help="videos per class (4 classes, every 5th val)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--only", choices=("lr", "whole"), help="run one of the two comparisons")
    args = parser.parse_args()
    lrs = PROTOCOLS["dinov2-linear"].grid["lr"].value
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "whole":
            lr_grid(Path(tmp), args, lrs)
        if args.only != "lr":
            whole_grid(Path(tmp), args, lrs)


if __name__ == "__main__":
    main()
