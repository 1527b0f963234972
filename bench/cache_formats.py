"""Cache formats benchmark: what int8 tokens and pooled patches cost and save, on a real extracted cache.

Takes a float16 cache (e.g. the demo benchmark extracted with vit-tiny), writes the other formats from it with
``compact`` (the real code path; the time is the write figure), then prints per format:

  bytes/clip    shard bytes on disk per clip (tokens, scales, metadata, HDF5 overhead)
  tokens/clip   token bytes per clip as stored (int8: values + float16 scales)
  write MB/s    compact's output bytes per second (read source + dequantize/pool/quantize + write + checksum)
  random GB/s   one-clip reads in random order as the streaming loader reads them (ShardSet.read_stored, then
                dequantized in torch), stored bytes per second
  load GB/s     reading every clip into RAM as the in-memory loader does (stored bytes per second)
  train clips/s in-memory training through train_probe (fastest epoch after the first; int8 is dequantized
                per batch)

Every figure is the best of ``--rounds`` rounds that interleave the formats (other jobs only slow a figure down).

Files this small sit in the OS page cache after the first pass, so the read figures measure the CPU side of a
read (HDF5, copies, dequantization), not a disk.

    python bench/cache_formats.py --cache demo/shards --probe step --epochs 3
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from step_cache.cache.compact import compact
from step_cache.cache.shards import open_shards
from step_cache.training.token_data import InMemoryTokens, as_tensor, select_tokens
from step_cache.training.trainer import train_probe

FORMATS = {"float16": (None, 1), "int8": ("int8", 1), "pool2": (None, 2), "int8+pool2": ("int8", 2)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="a float16 cache (extract's default dtype)")
    parser.add_argument("--work", type=Path, default=None, help="where to write the other formats (default: temp)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--probe", default="step")
    parser.add_argument("--epochs", type=int, default=3, help="the first warms up, the fastest other counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="read passes per round; the fastest counts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the formats; the best counts")
    return parser.parse_args()


def build(source: Path, work: Path, name: str) -> tuple[Path, float]:
    if name == "float16":
        return source, float("nan")
    dtype, pool = FORMATS[name]
    out = work / name
    report = compact(source, out, dtype=dtype, pool_patches=pool, overwrite=True, progress=False)
    return out, report.out_bytes / report.seconds / 1e6


def read_speeds(directory: Path, repeats: int) -> tuple[float, float]:
    shards = open_shards(directory)
    order = np.random.default_rng(0).permutation(len(shards))
    shards.read_tokens(order[:4])  # open handles, fill the page cache
    random_best = load_best = float("inf")
    selection = select_tokens(shards.layout, "all")
    for _ in range(repeats):
        started = time.perf_counter()
        for index in order:
            as_tensor(*shards.read_stored([index]), shards.layout.read_dtype)
        random_best = min(random_best, time.perf_counter() - started)
        started = time.perf_counter()
        InMemoryTokens(shards, np.arange(len(shards)), selection, shards.labels)
        load_best = min(load_best, time.perf_counter() - started)
    total = shards.tokens_nbytes / 1e9
    return total / random_best, total / load_best


def train_speed(directory: Path, args: argparse.Namespace, out: Path) -> float:
    result = train_probe(
        directory, args.probe, out, overwrite=True, epochs=args.epochs, batch_size=args.batch_size,
        data="memory", progress=False,
    )  # fmt: skip
    return max(record["clips_per_s"] for record in (result.history[1:] or result.history))


def main() -> None:
    args = parse_args()
    source = open_shards(args.cache)
    if source.layout.dtype != "float16":
        raise SystemExit(f"{args.cache}: a float16 cache is needed, this one is {source.layout.dtype}")
    frames, tokens, dim = source.clip_shape
    print(f"source: {args.cache}, {len(source)} clips of T={frames} x P={tokens} x D={dim} float16")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; probe {args.probe}, "
        f"batch {args.batch_size}"
    )
    header = ["format", "P", "bytes/clip", "tokens/clip", "x float16", "write MB/s", "random GB/s", "load GB/s"]
    print("".join(f"{h:>14}" for h in [*header, "train clips/s"]))
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as scratch:
        work = args.work or Path(scratch)
        base_tokens = source.tokens_nbytes / len(source)
        built = {name: build(args.cache, work, name) for name in args.formats}
        # Rounds interleave the formats and each figure is the best of its rounds: on a shared machine other jobs
        # only ever slow a measurement down, and interleaving spreads their coming and going over every format.
        best: dict[str, list[float]] = {name: [0.0, 0.0, 0.0] for name in args.formats}
        for _ in range(args.rounds):
            for name, (directory, _speed) in built.items():
                figures = (*read_speeds(directory, args.repeats), train_speed(directory, args, work / f"run-{name}"))
                best[name] = [max(a, b) for a, b in zip(best[name], figures, strict=True)]
        for name, (directory, write_speed) in built.items():
            shards = open_shards(directory)
            on_disk = sum(record.bytes for record in shards.manifest.shards) / len(shards)
            per_clip = shards.tokens_nbytes / len(shards)
            random_speed, load_speed, clips_per_s = best[name]
            row = [name, shards.clip_shape[1], f"{on_disk:,.0f}", f"{per_clip:,.0f}", f"{per_clip / base_tokens:.3f}"]
            row += [f"{write_speed:.0f}", f"{random_speed:.3f}", f"{load_speed:.2f}", f"{clips_per_s:.0f}"]
            print("".join(f"{v!s:>14}" for v in row), flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
