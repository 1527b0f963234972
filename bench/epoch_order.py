"""Accuracy of the two epoch orders (``--order random`` / ``runs``) on benchmark caches (docs/training.md, "Epoch
order"): per cache and probe, ``train_probe`` with the defaults and ``--seeds S`` (one stacked run per order), test
top-1 mean ± std over the seeds, and the runs order's clips per run on that cache.

    python bench/epoch_order.py CACHE [CACHE ...] [--probes linear step] [--seeds 3]
    python bench/epoch_order.py --synthetic synth2 ...   # also the synth2 cache of docs/training.md (written here)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.epoch_order import cache_run
from step_cache.training.trainer import train_probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="*", type=Path)
    parser.add_argument("--synthetic", action="store_true", help="also synth2 (docs/training.md)")
    parser.add_argument("--probes", nargs="+", default=["linear", "step"])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        caches = list(args.caches)
        if args.synthetic:
            caches.append(Path(work) / "synth2")
            write_token_cache(caches[-1], task="order", num_classes=6, videos_per_class=40, frames=8, grid=(4, 4),
                              dim=64, val_every=4, test_every=5, noise=1.5, seed=7)  # fmt: skip
        print("| cache | probe | batch | clips per run | random: test top-1 | runs: test top-1 |")
        print("|---|---|---|---|---|---|")
        for cache in caches:
            for probe in args.probes:
                figures = {}
                for order in ("random", "runs"):
                    run = train_probe(cache, probe, Path(work) / f"{cache.name}-{probe}-{order}", seeds=args.seeds,
                                      order=order, progress=False)  # fmt: skip
                    top1 = [seed["test"]["top1"] for seed in run.metrics["per_seed"]]
                    config = json.loads((run.run_dir / "config.json").read_text())["config"]
                    figures[order] = (float(np.mean(top1)), float(np.std(top1, ddof=1)), config["batch_size"])
                batch = figures["random"][2]
                run_length = cache_run(open_shards(cache), batch)
                cells = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s, _ in figures.values()]
                print(f"| {cache.name} | {probe} | {batch} | {run_length} | {cells[0]} | {cells[1]} |", flush=True)
                print(json.dumps({"cache": cache.name, "probe": probe, **figures}), flush=True)


if __name__ == "__main__":
    main()
