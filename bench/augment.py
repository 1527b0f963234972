"""Do the token-space augmentations help? (docs/training.md, "Token-space augmentations")

For every cache and probe this trains, with the default schedule and learning rate and S seeds each (as stacked
batches; each variant is its own stack, since augmentations are shared by a stack):

- ``none``: no augmentation;
- ``token-drop P``: every frame keeps a random (1 - P) of its patch tokens per clip and epoch;
- ``reverse-pairs Q``: a clip of a mirrored class is reversed and relabelled as its partner with probability Q;
- ``both``.

The checkpoint is chosen on val as always; the figures are the **test** split's (mean ± sample std over seeds).
One JSON line per (cache, probe) goes to --out.

    python bench/augment.py CACHE [CACHE ...] --out augment.jsonl [--probes step attentive] [--seeds 3]
    python bench/augment.py --table augment.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from result_rows import append_row, cache_name, pending, variant_cells
from stacked_groups import train_groups

from step_cache.cache.shards import open_shards
from step_cache.training.config import make_config
from step_cache.training.splits import shard_splits

PROBES = ("attentive", "self-attentive", "step")  # the linear probe reads CLS only: nothing to drop


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("augment.jsonl"))
    parser.add_argument("--probes", nargs="+", default=list(PROBES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--token-drop", type=float, default=0.5)
    parser.add_argument("--reverse-pairs", type=float, default=0.5)
    parser.add_argument("--table", type=Path, help="print the table of a --out file and exit")
    return parser.parse_args()


def variants(token_drop: float, reverse_pairs: float) -> dict[str, dict[str, float]]:
    return {
        "none": {},
        f"token-drop {token_drop:g}": {"token_drop": token_drop},
        f"reverse-pairs {reverse_pairs:g}": {"reverse_pairs": reverse_pairs},
        "both": {"token_drop": token_drop, "reverse_pairs": reverse_pairs},
    }


def measure(cache: Path, probe: str, seeds: int, chosen: dict[str, dict[str, float]]) -> dict:
    shards = open_shards(cache)
    base = {"progress": False, "data": "memory"}
    groups = {
        name: [make_config(probe, {**base, **options, "seed": s}) for s in range(seeds)]
        for name, options in chosen.items()
    }
    by_group, seconds = train_groups(shards, groups)
    splits = shard_splits(shards)
    return {
        "cache": str(cache),
        "probe": probe,
        "train_clips": len(splits.train),
        "test_clips": len(splits.test),
        "frames": shards.manifest.frames,
        "groups": by_group,
        "seconds": seconds,
    }


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    names = list(rows[0]["groups"]) if rows else []
    header = " | ".join(f"{name}: test top-1 | pair" for name in names)
    lines = [f"| cache | train / test | T | probe | {header} |", "|---|---|---:|---|" + "---:|---:|" * len(names)]
    for row in rows:
        cells = variant_cells(row, names)
        lines.append(
            f"| {cache_name(row['cache'])} | {row['train_clips']} / {row['test_clips']} | "
            f"{row['frames']} | {row['probe']} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.table:
        print(table(args.table))
        return
    chosen = variants(args.token_drop, args.reverse_pairs)
    for cache, probe in pending(args.out, args.caches, args.probes):
        row = measure(cache, probe, args.seeds, chosen)
        append_row(args.out, row)
        figures = ", ".join(
            f"{name} {100 * np.mean(group['test']['pair_accuracy'] or group['test']['top1']):.1f}"
            for name, group in row["groups"].items()
        )
        print(f"{cache} {probe}: test pair {figures}; {row['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
