"""Stage two out of core (issue 30): a synthetic cache of --gib GiB, read from disk, one epoch per probe.

Writes a synthetic token cache (the ``static`` task of step_cache.synthetic: T = 16 x (1 + 16 x 16) x 384 float16
by default, the shape of DINOv2-S/14 at 224 px; ``--variant int8`` stores it in int8, ``pooled`` pools the patches
2 x 2), then, with the cache's files evicted from the page cache before each step (posix_fadvise DONTNEED: other
processes keep theirs; where that does not exist the figures say "warm"):

  sequential   the disk's sequential read rate: the shard files read once with plain reads (--seq-gib of them)
  read-only    one streaming epoch of reads alone, in the random order and in the runs order (--order runs)
  linear/step/attentive
               one streaming training epoch each (linear on the CLS tokens, as --tokens auto does; step and
               attentive on every token): clips/s, I/O share (time waiting for data / epoch), bytes read from the
               disk (/proc/self/io read_bytes of the process and its reader processes) and peak RSS (process +
               readers); --max-batches caps a compute-bound probe's epoch (the output says so)
  stack        a K = 16 stacked sweep's epoch (train_stacked, 16 learning rates) / one probe's (K = 1), linear on
               every token (reading, not compute, is the cost there)

and prints ratios that hold on another machine: bytes read per second / disk sequential rate, K = 16 / K = 1.
Each measurement runs in a child process of its own, so its peak RSS is its own. Before writing it refuses when the
cache would leave less than --keep-free-gib free; the cache is deleted afterwards, also on Ctrl-C.

    python bench/scale.py --gib 2                      # quick check (about a minute or two)
    python bench/scale.py --gib 36 --max-batches 20    # 1.5x RAM on a 24 GiB machine
    python bench/scale.py --gib 36 --keep --dir D      # ... keeping the cache, then an A/B on the same bytes:
    STEP_CACHE_READ_VIA_HDF5=1 python bench/scale.py --reuse D/step-cache-scale-XXXX --steps read,step,attentive
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from disk_io import evict, io_counters

VARIANTS = {  # grid, dtype, patch_pool
    "float16": ((16, 16), "float16", 1),
    "int8": ((16, 16), "int8", 1),
    "pooled": ((8, 8), "float16", 2),
}
FRAMES, DIM, CLASSES = 16, 384, 8


def write_cache(directory: Path, gib: float, variant: str) -> int:
    """A static-task cache of about ``gib`` GiB; noise comes from a pool drawn once (drawing it per clip would
    take longer than writing it)."""
    from step_cache.synthetic.tokens import SyntheticTokens, write_token_cache

    grid, dtype, pool = VARIANTS[variant]

    class Pooled(SyntheticTokens):
        def clip(self, label: int, rng: np.random.Generator) -> np.ndarray:
            tokens = noise[int(rng.integers(len(noise)))].copy()
            tokens[:, :, label % self.dim] += self.signal
            return tokens

    spec = Pooled(task="static", num_classes=CLASSES, frames=FRAMES, grid=grid, dim=DIM, dtype=dtype,
                  patch_pool=pool, val_every=50, clips_per_shard=512, signal=1.0, noise=1.0)  # fmt: skip
    noise = np.random.default_rng(0).standard_normal((8, FRAMES, spec.layout.tokens_per_frame, DIM), np.float32)
    noise = noise.astype(np.float16)
    clips = max(2 * CLASSES, int(gib * 2**30 // spec.layout.clip_bytes(FRAMES)))
    write_token_cache(directory, spec, videos_per_class=clips // CLASSES)
    return sum(p.stat().st_size for p in directory.glob("shard-*.h5"))


def sequential_rate(directory: Path, limit: int) -> float:
    total, started = 0, time.perf_counter()
    for path in sorted(directory.glob("shard-*.h5")):
        with open(path, "rb", buffering=0) as handle:
            while total < limit and (chunk := handle.read(16 << 20)):
                total += len(chunk)
    return total / (time.perf_counter() - started)


def peak_rss() -> int:
    """Bytes: the larger of this process's peak and its largest reaped child's (the reader processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return 1024 * max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


def child(args: argparse.Namespace) -> dict:
    """One measurement (``args.step``) in this fresh process; returns its figures."""
    import gc

    import torch
    import torch.nn.functional as F

    from step_cache.cache.shards import open_shards
    from step_cache.probes import build_probe
    from step_cache.training.config import make_config
    from step_cache.training.epoch_loop import train_epoch
    from step_cache.training.epoch_order import cache_run, runs_plan
    from step_cache.training.run_data import probe_shape
    from step_cache.training.stacking import train_stacked
    from step_cache.training.streaming import StreamingTokens
    from step_cache.training.token_data import batch_plan, select_tokens

    torch.manual_seed(0)
    shards = open_shards(args.cache, check=False)
    rows = np.nonzero(shards.splits != "val")[0]
    before, started = io_counters()["read_bytes"], time.perf_counter()
    figures: dict = {}
    if args.step.startswith("stack"):
        lrs = np.geomspace(1e-4, 1e-2, args.k)
        options = {"epochs": 1, "batch_size": args.batch_size, "data": "streaming", "workers": args.workers,
                   "tokens": "all", "progress": False, "early_stop": False}  # fmt: skip
        records: list[dict] = []
        train_stacked(shards, [make_config("linear", {**options, "lr": float(lr)}) for lr in lrs],
                      on_epoch=lambda member, record: records.append(record))  # fmt: skip
        figures.update(train_s=records[0]["train_s"], data_wait_s=records[0]["data_wait_s"], clips=len(rows))
    else:
        probe, tokens = {"linear": ("linear", "cls"), "read": (None, "all")}.get(args.step, (args.step, "all"))
        selection = select_tokens(shards.layout, tokens)
        plan = (runs_plan(rows, args.batch_size, run=cache_run(shards, args.batch_size)) if args.order == "runs"
                else batch_plan(rows, args.batch_size, shuffle=True))  # fmt: skip
        capped = args.max_batches is not None and probe not in (None, "linear") and args.max_batches < len(plan)
        plan = plan[: args.max_batches] if capped else plan
        source = StreamingTokens(shards, selection, shards.labels, workers=args.workers)
        first_wait = _time_first_batch(source)
        if probe is None:  # reads alone
            for _ in source.batches(plan):
                pass
            elapsed = time.perf_counter() - started
            figures.update(train_s=elapsed, data_wait_s=elapsed, clips=int(sum(len(b) for b in plan)))
        else:
            model = build_probe(probe, **probe_shape(shards, selection))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

            def step(batch: torch.Tensor, labels: torch.Tensor):
                optimizer.zero_grad(set_to_none=True)
                logits = model(batch)
                loss = F.cross_entropy(logits.float(), labels)
                loss.backward()
                optimizer.step()
                return loss.detach(), logits.detach(), 1e-3, None

            train = train_epoch(source, plan, torch.device("cpu"), step, progress=False)
            figures.update(train_s=train["train_s"], data_wait_s=train["data_wait_s"], clips=train["clips"])
        figures["first_batch_wait_s"] = first_wait[0]
        figures["capped_batches"] = len(plan) if capped else None
        figures["readers"] = source.workers
        source.close()
    del shards
    gc.collect()
    figures.update(
        disk_bytes=io_counters()["read_bytes"] - before, wall_s=time.perf_counter() - started, peak_rss=peak_rss()
    )
    return figures


def _time_first_batch(source) -> list[float]:
    """Wrap ``source.batches`` so that the wait for the first batch of the pass (reader processes starting, files
    opening, the first read) is recorded apart: the I/O share of a capped epoch is mostly that start-up, which a
    full epoch spreads over thousands of batches and later epochs do not pay (the readers persist)."""
    wait = [0.0]
    batches = source.batches

    def timed(plan):
        started = time.perf_counter()
        iterator = batches(plan)
        first = next(iterator, None)
        wait[0] = time.perf_counter() - started
        if first is not None:
            yield first
            yield from iterator

    source.batches = timed
    return wait


def measure(args: argparse.Namespace, step: str, **extra: object) -> dict:
    cold = evict(args.cache.glob("shard-*.h5"))
    command = [sys.executable, __file__, "--child", step, "--cache", str(args.cache),
               "--batch-size", str(args.batch_size), "--k", str(extra.get("k", 16)),
               "--order", str(extra.get("order", "random"))]  # fmt: skip
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    if args.max_batches is not None:
        command += ["--max-batches", str(args.max_batches)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{step} failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["cold"] = cold
    return figures


def report(name: str, figures: dict, cache_bytes: int, seq: float) -> None:
    rate = figures["disk_bytes"] / figures["train_s"]
    io_share = figures["data_wait_s"] / figures["train_s"]
    capped = f", capped at {figures['capped_batches']} batches" if figures.get("capped_batches") else ""
    if figures.get("first_batch_wait_s") is not None and figures["data_wait_s"] < figures["train_s"]:
        steady = (figures["data_wait_s"] - figures["first_batch_wait_s"]) / figures["train_s"]
        capped += f", first batch {figures['first_batch_wait_s']:.1f} s (I/O share after it {steady:.0%})"
    capped += f", {figures['readers']} readers" if figures.get("readers") is not None else ""
    print(
        f"  {name:<18} {figures['clips'] / figures['train_s']:7.1f} clips/s  I/O share {io_share:4.0%}  "
        f"read {figures['disk_bytes'] / 2**30:6.2f} GiB = {figures['disk_bytes'] / cache_bytes:6.1%} of the cache  "
        f"{rate / 1e6:6.0f} MB/s = {rate / seq:4.2f}x sequential  peak RSS {figures['peak_rss'] / 2**30:.2f} GiB"
        f"{'' if figures['cold'] else '  (warm: page cache not emptied)'}{capped}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="cache size in GiB (1.5x RAM for the full run)")
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="float16")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the cache (default: a temp dir)")
    parser.add_argument("--keep-free-gib", type=float, default=6.0, help="refuse to leave less free than this")
    parser.add_argument("--seq-gib", type=float, default=8.0, help="GiB read by the sequential-rate step")
    parser.add_argument("--max-batches", type=int, default=None, help="cap step/attentive epochs (compute-bound)")
    parser.add_argument("--workers", type=int, default=None, help="reader processes (default: the library's rule)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", default="read,linear,step,attentive,stack")
    parser.add_argument("--keep", action="store_true", help="keep the cache afterwards (for --reuse)")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="measure the cache a --keep run left in this folder instead of writing one: an A/B of "
                             "two versions of the code (or STEP_CACHE_READ_VIA_HDF5=1) on the same bytes")  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--order", default="random", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.step = args.child
        print(json.dumps(child(args)))
        return
    if args.reuse is not None:
        run(args, args.reuse)
        return
    parent = args.dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free - args.gib * 2**30 < args.keep_free_gib * 2**30:
        raise SystemExit(
            f"{parent}: {free / 2**30:.1f} GiB free; a {args.gib:g} GiB cache would leave less than "
            f"{args.keep_free_gib:g} GiB: refused (use a smaller --gib or another --dir)"
        )
    work = Path(tempfile.mkdtemp(prefix="step-cache-scale-", dir=parent))
    try:
        run(args, work)
    finally:  # also on Ctrl-C: never leave tens of GB behind, unless asked to
        if args.keep:
            print(f"kept: {work} (measure it again with --reuse {work}; delete it afterwards)", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    args.cache = work / "cache"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; RAM {ram / 2**30:.1f} GiB", flush=True)
    started = time.perf_counter()
    if args.reuse is None:
        cache_bytes = write_cache(args.cache, args.gib, args.variant)
        print(f"cache: {cache_bytes / 2**30:.2f} GiB ({args.variant}) written in {time.perf_counter() - started:.0f} "
              f"s to {args.cache}", flush=True)  # fmt: skip
    else:
        cache_bytes = sum(p.stat().st_size for p in args.cache.glob("shard-*.h5"))
        print(f"cache: {cache_bytes / 2**30:.2f} GiB, reused from {args.cache}", flush=True)
    if os.environ.get("STEP_CACHE_READ_VIA_HDF5") == "1":
        print("  (STEP_CACHE_READ_VIA_HDF5=1: every read goes through HDF5)", flush=True)
    cold = evict(args.cache.glob("shard-*.h5"))
    seq = sequential_rate(args.cache, int(args.seq_gib * 2**30))
    print(f"  sequential read    {seq / 1e6:6.0f} MB/s{'' if cold else ' (warm)'}", flush=True)
    steps = args.steps.split(",")
    if "read" in steps:
        for order in ("random", "runs"):
            report(f"read-only {order}", measure(args, "read", order=order), cache_bytes, seq)
    for probe in ("linear", "step", "attentive"):
        if probe in steps:
            report(probe + (" (CLS)" if probe == "linear" else ""), measure(args, probe), cache_bytes, seq)
    if "stack" in steps:
        one, stack = measure(args, "stack1", k=1), measure(args, "stack16", k=16)
        report("stack K=1 (linear)", one, cache_bytes, seq)
        report("stack K=16", stack, cache_bytes, seq)
        print(f"  K=16 epoch / K=1 epoch: {stack['train_s'] / one['train_s']:.2f}x", flush=True)
    cold = evict(args.cache.glob("shard-*.h5"))
    seq_after = sequential_rate(args.cache, int(args.seq_gib * 2**30))
    print(f"  sequential read    {seq_after / 1e6:6.0f} MB/s at the end{'' if cold else ' (warm)'}: this disk's rate "
          f"moves between runs; the ratios above are to the first figure", flush=True)  # fmt: skip
    print(f"load: {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
