"""Cache formats benchmark: what int8 tokens and pooled patches cost and save, on a real extracted cache.

Takes a float16 cache (e.g. the demo benchmark extracted with vit-tiny), writes the other formats from it with
``compact`` (the real code path; the time is the write figure), then prints per format:

  bytes/clip    shard bytes on disk per clip (tokens, scales, metadata, HDF5 overhead)
  tokens/clip   token bytes per clip as stored (int8: values + float16 scales)
  write MB/s    compact's output bytes per second (read source + dequantize/pool/quantize + write + checksum)
  random GB/s   one-clip reads in random order as the streaming loader reads them (ShardSet.read_stored, then
                dequantized in torch), stored bytes per second
  load GB/s     reading every clip into RAM as the in-memory loader does (stored bytes per second)
  memory clips/s
                in-memory training through train_probe (fastest epoch after the first; int8 is dequantized
                per batch)
  stream clips/s
                streaming training (``data="streaming"``: batches read from the shards on demand by reader
                processes, ``--workers``; train-probe's default is the spare cores, at most 4), fastest epoch after
                the first; "wait" is the share of that epoch the training loop waited for its next batch

Formats: float16 (the source), int8, pool 2 (float16), int8 + pool 2, and int8 + project K for each ``--project K``
(PCA on the training clips, ``compact --project``; default K = D/1.5 and D/3 rounded to a multiple of 64 where
that is < D, e.g. 128 and 64 at D = 192, 256 and 128 at D = 384).

Every figure is the best of ``--rounds`` rounds that interleave the formats (other jobs only slow a figure down).

Files this small sit in the OS page cache after the first pass, so the read figures measure the CPU side of a
read (HDF5, copies, dequantization), not a disk.

    python bench/cache_formats.py --cache demo/shards --probe step --epochs 3
    python bench/cache_formats.py --cache dinov2/shards --project 256 128 --formats float16 int8 int8+p256
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

# name -> (dtype, pool_patches, project); int8+pK formats are added per --project K.
FORMATS = {
    "float16": (None, 1, None),
    "int8": ("int8", 1, None),
    "pool2": (None, 2, None),
    "int8+pool2": ("int8", 2, None),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="a float16 cache (extract's default dtype)")
    parser.add_argument("--work", type=Path, default=None, help="where to write the other formats (default: temp)")
    parser.add_argument(
        "--formats", nargs="+", default=None, help=f"subset of {', '.join(FORMATS)}, int8+pK (default: all)"
    )
    parser.add_argument(
        "--project", nargs="*", type=int, default=None, help="K of the int8+pK formats (default: from D, see above)"
    )
    parser.add_argument("--data", nargs="+", default=["memory", "streaming"], choices=["memory", "streaming"])
    parser.add_argument("--workers", type=int, default=None, help="streaming reader processes (default: train-probe's)")
    parser.add_argument("--probe", default="step")
    parser.add_argument("--epochs", type=int, default=3, help="the first warms up, the fastest other counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="read passes per round; the fastest counts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the formats; the best counts")
    return parser.parse_args()


def default_projections(dim: int) -> list[int]:
    return sorted({k for k in (64 * round(dim / 1.5 / 64), 64 * round(dim / 3 / 64)) if 0 < k < dim}, reverse=True)


def formats(args: argparse.Namespace, dim: int) -> dict[str, tuple[str | None, int, int | None]]:
    projects = default_projections(dim) if args.project is None else args.project
    known = {**FORMATS, **{f"int8+p{k}": ("int8", 1, k) for k in projects}}
    chosen = args.formats or list(known)
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise SystemExit(f"unknown formats {unknown}; known: {', '.join(known)} (int8+pK needs --project K)")
    return {name: known[name] for name in chosen}


def build(source: Path, work: Path, name: str, spec: tuple[str | None, int, int | None]) -> tuple[Path, float]:
    if name == "float16":
        return source, float("nan")
    dtype, pool, project = spec
    out = work / name
    report = compact(source, out, dtype=dtype, pool_patches=pool, project=project, overwrite=True, progress=False)
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


def train_speed(directory: Path, args: argparse.Namespace, out: Path, data: str) -> tuple[float, float]:
    """Clips/s of the fastest epoch after the first, and the share of that epoch spent waiting for batches."""
    result = train_probe(
        directory, args.probe, out, overwrite=True, epochs=args.epochs, batch_size=args.batch_size,
        data=data, workers=args.workers, progress=False,
    )  # fmt: skip
    best = max(result.history[1:] or result.history, key=lambda record: record["clips_per_s"])
    return best["clips_per_s"], best["data_wait_s"] / best["train_s"]


def measure_round(directory: Path, args: argparse.Namespace, out: Path) -> dict[str, float]:
    random_speed, load_speed = read_speeds(directory, args.repeats)
    figures = {"random": random_speed, "load": load_speed}
    for data in args.data:
        figures[data], figures[f"{data} wait"] = train_speed(directory, args, out, data)
    return figures


def span(values: list[float], digits: int = 0) -> str:
    low, high = min(values), max(values)
    return (
        f"{high:.{digits}f}" if f"{low:.{digits}f}" == f"{high:.{digits}f}" else f"{low:.{digits}f}-{high:.{digits}f}"
    )


def main() -> None:
    args = parse_args()
    source = open_shards(args.cache)
    if source.layout.dtype != "float16":
        raise SystemExit(f"{args.cache}: a float16 cache is needed, this one is {source.layout.dtype}")
    frames, tokens, dim = source.clip_shape
    chosen = formats(args, dim)
    print(f"source: {args.cache}, {len(source)} clips of T={frames} x P={tokens} x D={dim} float16")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; probe {args.probe}, "
        f"batch {args.batch_size}, streaming workers {args.workers if args.workers is not None else 'default'}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as scratch:
        work = args.work or Path(scratch)
        base_tokens = source.tokens_nbytes / len(source)
        built = {name: build(args.cache, work, name, spec) for name, spec in chosen.items()}
        # Rounds interleave the formats: on a shared machine other jobs only ever slow a measurement down, and
        # interleaving spreads their coming and going over every format. The best of the rounds is the figure;
        # the train columns also show the range over rounds (how unresolved a speed is).
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in built}
        for number in range(args.rounds):
            for name, (directory, _speed) in built.items():
                figures = measure_round(directory, args, work / f"run-{name}")
                rounds[name].append(figures)
                shown = ", ".join(f"{key} {value:.3g}" for key, value in figures.items())
                print(f"  round {number + 1} {name}: {shown}; load average {os.getloadavg()[0]:.1f}", flush=True)
        header = ["format", "P x D", "bytes/clip", "tokens/clip", "x float16", "write MB/s", "random GB/s", "load GB/s"]
        for data in args.data:
            header += [f"{data} clips/s", "wait"]
        print("".join(f"{h:>19}" for h in header))
        for name, (directory, write_speed) in built.items():
            shards = open_shards(directory)
            on_disk = sum(record.bytes for record in shards.manifest.shards) / len(shards)
            per_clip = shards.tokens_nbytes / len(shards)
            runs = rounds[name]
            row = [name, f"{shards.clip_shape[1]} x {shards.clip_shape[2]}", f"{on_disk:,.0f}", f"{per_clip:,.0f}"]
            row += [f"{per_clip / base_tokens:.3f}", f"{write_speed:.0f}"]
            row += [f"{max(r['random'] for r in runs):.3f}", f"{max(r['load'] for r in runs):.2f}"]
            for data in args.data:
                speeds = [r[data] for r in runs]
                best = max(runs, key=lambda r, data=data: r[data])
                row += [f"{max(speeds):.0f} ({span(speeds)})", f"{100 * best[f'{data} wait']:.0f} %"]
            print("".join(f"{v!s:>19}" for v in row), flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
