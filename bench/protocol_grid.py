"""What training a protocol's lr grid as one stack saves: the ``dinov2-linear`` preset's 13 SGD learning rates
trained as one stack (``train_stacked``, what ``sweep --protocol dinov2-linear`` does per avgpool value) against the
same 13 configurations trained one after another (``train_probe`` each), on a synthetic token cache. Prints the wall
times and their ratio, measured in the same process (note ``uptime`` beside it: the machine may be shared).

    python bench/protocol_grid.py [--dim 384] [--videos 40] [--epochs 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import make_config
from step_cache.training.protocols import PROTOCOLS
from step_cache.training.stacking.stacked_run import train_stacked
from step_cache.training.trainer import train_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--videos", type=int, default=40, help="videos per class (4 classes, every 5th val)")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    lrs = PROTOCOLS["dinov2-linear"].grid["lr"].value
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        write_token_cache(cache, task="static", num_classes=4, videos_per_class=args.videos, dim=args.dim,
                          val_every=5, test_every=4)  # fmt: skip
        shards = open_shards(cache)
        options = {"protocol": "dinov2-linear", "epochs": args.epochs, "progress": False}
        started = time.perf_counter()
        train_stacked(shards, [make_config(None, {**options, "lr": lr}) for lr in lrs])
        stacked = time.perf_counter() - started
        started = time.perf_counter()
        for index, lr in enumerate(lrs):
            train_probe(shards, out=Path(tmp) / f"lone-{index}", lr=lr, **options)
        lone = time.perf_counter() - started
    print(f"dinov2-linear lr grid ({len(lrs)} SGD linear probes, D={args.dim}, {args.epochs} epochs of batch 128):")
    print(f"  one stack {stacked:.2f} s | one after another {lone:.2f} s | ratio {lone / stacked:.1f}x")


if __name__ == "__main__":
    main()
