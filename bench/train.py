"""Stage-two benchmark: how fast does each probe train on cached tokens, and how much of that is I/O?

Writes a synthetic cache with ShardWriter at a realistic shape (default T=8 frames, 1 CLS + 14x14 patches = 197
tokens per frame, D=192: ViT-S/14-like), then trains every probe through ``train_probe`` (the real code path) with
the cache in memory and streamed from HDF5, and prints per probe and data path:

  clips/s      training throughput of the measured epoch (forward + backward + optimizer step)
  I/O share    time spent waiting for the next batch / epoch time (goal with the cache in memory: < 10 %)
  load s       one-off time to read the cache into RAM (in-memory path only)

The first epoch warms up (allocator, lazy init); of the others, the fastest is reported (best-of-N timing).

    python bench/train.py                                   # all probes, both data paths, 256 clips
    python bench/train.py --probes step linear --clips 512 --epochs 3
    python bench/train.py --dim 384 --device cuda --clips 4096 --batch-size 256   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from step_cache.cache.shards import open_shards
from step_cache.probes import PROBES
from step_cache.synthetic.tokens import SyntheticTokens, write_token_cache
from step_cache.training.token_data import InMemoryTokens, select_tokens
from step_cache.training.trainer import train_probe


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--modes", nargs="+", default=["memory", "streaming"], choices=["memory", "streaming"])
    parser.add_argument("--clips", type=int, default=256, help="training clips in the synthetic cache")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--grid", type=int, default=14, help="patch grid side (P = 1 + grid^2)")
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="the first warms up, the fastest other counts")
    parser.add_argument("--workers", type=int, default=1, help="streaming reader processes")
    parser.add_argument(
        "--tokens", default="all", choices=["auto", "all", "cls", "patches"], help="tokens the probes see"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cache", type=Path, default=None, help="reuse/keep the synthetic cache here")
    return parser.parse_args()


def make_cache(args: argparse.Namespace, directory: Path) -> float:
    if (directory / "manifest.json").is_file():
        return 0.0
    started = time.perf_counter()
    spec = SyntheticTokens(
        task="static",
        num_classes=args.classes,
        videos_per_class=max(1, -(-args.clips // args.classes)),
        frames=args.frames,
        grid=(args.grid, args.grid),
        dim=args.dim,
        val_every=0,
        clips_per_shard=512,
    )
    write_token_cache(directory, spec)
    return time.perf_counter() - started


def measure(args: argparse.Namespace, cache: Path, probe: str, mode: str, out: Path) -> dict:
    result = train_probe(
        cache,
        probe,
        out,
        overwrite=True,
        epochs=args.epochs,
        batch_size=args.batch_size,
        val_fraction=0.05,
        data=mode,
        workers=args.workers,
        tokens=args.tokens,
        device=args.device,
        progress=False,
    )
    # The fastest measured epoch: on a shared machine, other processes only ever slow an epoch down.
    best = max(result.history[1:] or result.history, key=lambda record: record["clips_per_s"])
    return {
        "clips_per_s": best["clips_per_s"],
        "io_share": best["data_wait_s"] / best["train_s"],
        "epoch_s": best["train_s"],
        "params": result.metrics["parameters"],
    }


def load_time(cache: Path, tokens: str) -> float:
    shards = open_shards(cache)
    started = time.perf_counter()
    subset = "all" if tokens == "auto" else tokens
    InMemoryTokens(shards, range(len(shards)), select_tokens(shards.layout, subset), shards.labels)
    return time.perf_counter() - started


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        cache = args.cache or Path(scratch) / "cache"
        written = make_cache(args, cache)
        shards = open_shards(cache)
        tokens = shards.manifest.layout.tokens_per_frame
        print(
            f"cache: {len(shards)} clips of T={args.frames} x P={tokens} x D={args.dim} float16, "
            f"{shards.tokens_nbytes / 2**20:.0f} MiB" + (f" (written in {written:.1f} s)" if written else "")
        )
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
            f"{torch.__version__}, {torch.get_num_threads()} threads, load average "
            f"{os.getloadavg()[0]:.1f}, device {args.device}, batch {args.batch_size}, workers {args.workers}"
        )
        if "memory" in args.modes:
            print(f"in-memory load ({args.tokens} tokens): {load_time(cache, args.tokens):.2f} s")
        print(f"{'probe':<16}{'params':>10}" + "".join(f"{m + ' clips/s':>20}{'I/O share':>11}" for m in args.modes))
        for probe in args.probes:
            row, params = "", 0
            for mode in args.modes:
                figures = measure(args, cache, probe, mode, Path(scratch) / f"{probe}-{mode}")
                params = figures["params"]
                row += f"{figures['clips_per_s']:>20.1f}{100 * figures['io_share']:>10.1f}%"
            print(f"{probe:<16}{params:>10,}{row}", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
