"""CLS-only reads: bytes a CLS-only epoch reads from disk with the CLS copy (``storage.cls_copy``), by slicing the
tokens (a cache without the copy), and a whole-token epoch, each after dropping the page cache.

Writes a synthetic cache (T x (1 + 14 x 14) x D float16 by default, as a /16 ViT at 224 px writes), then reads
every clip in shuffled batches of 64 as a linear probe on CLS tokens would, three ways. Bytes are the process's
``read_bytes`` (/proc/self/io: what the block layer read for it) around each epoch, with the page cache dropped
before each (``echo 3 > /proc/sys/vm/drop_caches``; needs root, else the figures are page-cache reads, marked
"warm"). The ratio to the tokens' bytes should be about C / P (1 / 197 here) with the copy.

    python bench/cls_read.py --clips 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from disk_io import drop_page_cache, io_counters

from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import SyntheticTokens, write_token_cache


def epoch(directory: Path, part: str, use_copy: bool, batch: int, seed: int) -> tuple[int, int, float, bool]:
    """(bytes read from disk, bytes read through read(), seconds, cold) of one shuffled pass over every clip."""
    cold = drop_page_cache()
    shards = open_shards(directory, check=False)
    if not use_copy:  # the same cache read as one without the copy: CLS tokens sliced out of the tokens
        shards._cls_copy = [False] * len(shards.paths)
    order = np.random.default_rng(seed).permutation(len(shards))
    before, started = io_counters(), time.perf_counter()
    for first in range(0, len(order), batch):
        shards.read_stored(order[first : first + batch], part=part)
    seconds, after = time.perf_counter() - started, io_counters()
    shards.close()
    return after["read_bytes"] - before["read_bytes"], after["rchar"] - before["rchar"], seconds, cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dir", type=Path, default=None, help="folder for the temporary cache (default: /tmp)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(dir=args.dir))
    directory = root / "cache"
    try:
        spec = SyntheticTokens(
            task="static", num_classes=2, videos_per_class=args.clips // 2, frames=args.frames,
            grid=(args.grid, args.grid), dim=args.dim, clips_per_shard=128,
        )  # fmt: skip
        write_token_cache(directory, spec)
        shards = open_shards(directory)
        tokens_bytes, cls, per_frame = shards.tokens_nbytes, shards.layout.cls_tokens, shards.layout.tokens_per_frame
        shards.close()
        on_disk = sum(p.stat().st_size for p in directory.glob("shard-*.h5"))
        print(
            f"cache: {len(shards)} clips, {tokens_bytes / 2**20:.0f} MiB of tokens, {on_disk / 2**20:.0f} MiB on "
            f"disk; C/P = {cls}/{per_frame} = {cls / per_frame:.4f}; load {os.getloadavg()[0]:.2f}"
        )
        rows = [
            ("CLS, from the copy", "cls", True),
            ("CLS, sliced from tokens", "cls", False),
            ("all tokens", "all", True),
        ]
        for name, part, use_copy in rows:
            disk, rchar, seconds, cold = epoch(directory, part, use_copy, args.batch, seed=0)
            warm = "" if cold else "  (warm: no drop_caches)"
            print(
                f"{name:26s} disk {disk / 2**20:9.2f} MiB ({disk / tokens_bytes:.4f} of the tokens)  "
                f"read() {rchar / 2**20:9.2f} MiB  {seconds:6.2f} s{warm}"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
