"""Why streaming reads below the disk's sequential rate: one pass over a cold cache per read pattern (issue 30).

Each pass reads every clip of the cache once, in one process, after evicting the cache's files from the page cache
(posix_fadvise DONTNEED), and prints MB/s, bytes read from the disk / the cache's bytes, and the process's CPU
(user, system) as a share of the pass. Patterns:

  seq          plain 16 MiB reads of the shard files (the disk's sequential rate)
  pread        one pread per clip chunk at HDF5's byte offsets, file order (no HDF5, no numpy)
  pread-random / pread-runs   the same, in the random order (batch_plan) / the runs order (epoch_order.runs_plan)
  pread-random-advised        random order, each batch's chunks advised first (posix_fadvise WILLNEED)
  h5-clip      ShardSet.read_stored one clip at a time, file order
  h5-random / h5-runs         ShardSet.read_stored per batch of 64 (the streaming readers' call), as before
  h5-random-advised / h5-runs-advised      ... with advise=True (what the streaming readers did before raw reads)
  raw-random-advised / raw-runs-advised    ShardSet.read_stored per batch, advised, past HDF5 (preadv straight
               into the batch, step_cache.cache.raw_chunks: what the streaming readers do now)

The h5-* patterns go through HDF5 (STEP_CACHE_READ_VIA_HDF5=1 while they run). ``--warm`` reads from the page
cache instead (a first pass fills it; the cache must fit in memory): the CPU each path costs per byte, apart from
the disk.

To make a cache smaller than RAM behave as out of core, run it in a memory cgroup whose limit is below the cache's
size (the page cache is charged to it). For example, as root with cgroup v1 (v2: memory.max):

    mkdir /sys/fs/cgroup/memory/reads && echo 2G > /sys/fs/cgroup/memory/reads/memory.limit_in_bytes
    echo $$ > /sys/fs/cgroup/memory/reads/cgroup.procs
    python bench/read_paths.py --gib 5 --dir /var/tmp     # writes, measures, deletes a 5 GiB cache
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
from disk_io import evict, io_counters
from scale import write_cache

PATTERNS = ("seq", "pread", "pread-random", "pread-runs", "pread-random-advised", "h5-clip", "h5-random",
            "h5-runs", "h5-random-advised", "h5-runs-advised", "raw-random-advised", "raw-runs-advised",
            "seq")  # fmt: skip


def chunk_offsets(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each clip's ``tokens`` chunk, by clip."""
    with h5py.File(path, "r") as handle:
        dataset = handle["tokens"]
        infos = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
    return [(info.byte_offset, info.size) for info in sorted(infos, key=lambda info: info.chunk_offset)]


def patterns(cache: Path, batch: int) -> dict[str, Callable[[], None]]:
    from step_cache.cache.shards import open_shards
    from step_cache.training.epoch_order import cache_run, runs_plan
    from step_cache.training.token_data import batch_plan

    shards = open_shards(cache, check=False)
    rows = np.arange(len(shards))
    orders = {"random": batch_plan(rows, batch, shuffle=True), "file": [rows[i : i + 1] for i in rows],
              "runs": runs_plan(rows, batch, run=cache_run(shards, batch))}  # fmt: skip
    chunks = [chunk_offsets(path) for path in shards.paths]
    buffer = np.empty(max(size for shard in chunks for _, size in shard), np.uint8)

    def seq() -> None:
        for path in shards.paths:
            with open(path, "rb", buffering=0) as handle:
                while handle.read(16 << 20):
                    pass

    def pread(order: str, advised: bool = False) -> Callable[[], None]:
        def run() -> None:
            fds = [os.open(path, os.O_RDONLY) for path in shards.paths]
            for plan in orders[order]:
                places = [shards.locate(int(row)) for row in plan]
                if advised:
                    for shard, row in places:
                        os.posix_fadvise(fds[shard], *chunks[shard][row], os.POSIX_FADV_WILLNEED)
                for shard, row in places:
                    offset, size = chunks[shard][row]
                    os.preadv(fds[shard], [buffer[:size]], offset)
            for fd in fds:
                os.close(fd)

        return run

    def h5(order: str, advised: bool = False, via_hdf5: bool = True) -> Callable[[], None]:
        def run() -> None:
            os.environ["STEP_CACHE_READ_VIA_HDF5"] = "1" if via_hdf5 else "0"
            try:
                for plan in orders[order]:
                    shards.read_stored(plan, advise=advised)  # each batch dropped once read
            finally:
                os.environ.pop("STEP_CACHE_READ_VIA_HDF5")

        return run

    return {"seq": seq, "pread": pread("file"), "pread-random": pread("random"), "pread-runs": pread("runs"),
            "pread-random-advised": pread("random", True), "h5-clip": h5("file"), "h5-random": h5("random"),
            "h5-runs": h5("runs"), "h5-random-advised": h5("random", True),
            "h5-runs-advised": h5("runs", True), "raw-random-advised": h5("random", True, via_hdf5=False),
            "raw-runs-advised": h5("runs", True, via_hdf5=False)}  # fmt: skip


def measure(name: str, run: Callable[[], None], paths: list[Path], total: int, warm: bool) -> None:
    if warm:
        run()  # fills the page cache
    cold = False if warm else evict(paths)
    before, usage, started = io_counters()["read_bytes"], resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    disk = io_counters()["read_bytes"] - before
    user, system = (after.ru_utime - usage.ru_utime) / seconds, (after.ru_stime - usage.ru_stime) / seconds
    print(f"  {name:<22} {total / seconds / 1e6:6.0f} MB/s  disk read {disk / total:4.2f}x the cache  "
          f"CPU user {user:4.0%} system {system:4.0%}  load {os.getloadavg()[0]:.1f}{'' if cold else '  (warm)'}",
          flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="an existing float16 cache (default: write one)")
    parser.add_argument("--keep", action="store_true", help="keep the cache written (to measure again with --cache)")
    parser.add_argument("--gib", type=float, default=5.0, help="size of the cache written when --cache is not given")
    parser.add_argument("--dir", type=Path, default=None, help="where to write it (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    parser.add_argument("--warm", action="store_true", help="read from the page cache: each path's CPU per byte")
    args = parser.parse_args()
    work = None
    if args.cache is None:
        work = Path(tempfile.mkdtemp(prefix="step-cache-reads-", dir=args.dir))
        args.cache = work / "cache"
    try:
        if work is not None:
            write_cache(args.cache, args.gib, "float16")
        paths = sorted(args.cache.glob("shard-*.h5"))
        total = sum(path.stat().st_size for path in paths)
        print(f"cache {total / 2**30:.2f} GiB, {len(paths)} shards; load {os.getloadavg()[0]:.1f}", flush=True)
        runs = patterns(args.cache, args.batch_size)
        for name in args.patterns.split(","):
            measure(name, runs[name], paths, total, args.warm)
    finally:
        if work is not None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
