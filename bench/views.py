"""Do cached augmented views help? (docs/training.md, "Augmented views")

For every cache (written with ``extract --views N``) and probe this trains, with the default schedule and learning
rate and S seeds each (as stacked batches; each variant is its own stack, since views and augmentations are shared
by a stack):

- ``views off``: the clean clips only (what the same cache without views trains on);
- ``views on``: each epoch, every training clip as one of its 1 + N views (the default);
- ``views + token-drop P`` and ``views + reverse-pairs Q``: the token-space augmentations on top of the views
  (``reverse-pairs`` only where the cache has mirrored pairs; ``token-drop`` not for the linear probe, which reads
  the CLS token only).

The checkpoint is chosen on val as always; the figures are the **test** split's (mean ± sample std over seeds). One
JSON line per (cache, probe) goes to --out; a stopped bench goes on where it stopped.

    python bench/views.py CACHE [CACHE ...] --out views.jsonl [--probes step attentive] [--seeds 3]
    python bench/views.py --table views.jsonl
    python bench/views.py --table views.jsonl more.jsonl --pooled   # per probe, over every cache's runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from result_rows import append_row, mean_std, pending, variant_cells
from stacked_groups import train_groups

from step_cache.cache.shards import open_shards
from step_cache.training.config import make_config
from step_cache.training.splits import shard_splits
from step_cache.training.view_table import view_table

PROBES = ("linear", "attentive", "self-attentive", "step")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("views.jsonl"))
    parser.add_argument("--probes", nargs="+", default=list(PROBES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--token-drop", type=float, default=0.5)
    parser.add_argument("--reverse-pairs", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, help="override the automatic schedule (a quick check)")
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of --out file(s) and exit")
    parser.add_argument(
        "--pooled",
        action="store_true",
        help="with --table: one row per probe and metric over every cache's runs (caches x seeds), with each "
        "variant's paired difference from 'views off' (same cache, same seed)",
    )
    return parser.parse_args()


def variants(probe: str, has_pairs: bool, token_drop: float, reverse_pairs: float) -> dict[str, dict]:
    chosen: dict[str, dict] = {"views off": {"views": "off"}, "views on": {"views": "on"}}
    if probe != "linear":
        chosen[f"views + token-drop {token_drop:g}"] = {"views": "on", "token_drop": token_drop}
    if has_pairs:
        chosen[f"views + reverse-pairs {reverse_pairs:g}"] = {"views": "on", "reverse_pairs": reverse_pairs}
    return chosen


def measure(cache: Path, probe: str, seeds: int, args: argparse.Namespace) -> dict:
    shards = open_shards(cache)
    base = {"progress": False, "data": "memory", **({"epochs": args.epochs} if args.epochs else {})}
    chosen = variants(probe, bool(shards.manifest.pairs), args.token_drop, args.reverse_pairs)
    groups = {
        name: [make_config(probe, {**base, **options, "seed": s}) for s in range(seeds)]
        for name, options in chosen.items()
    }
    by_group, seconds = train_groups(shards, groups)
    splits = shard_splits(shards)
    return {
        "cache": str(cache),
        "probe": probe,
        "views_per_clip": view_table(shards, splits.train, "on").available,
        "train_clips": len(splits.train),
        "test_clips": len(splits.test),
        "frames": shards.manifest.frames,
        "groups": by_group,
        "seconds": seconds,
    }


def read_rows(paths: list[Path]) -> list[dict]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]


def variant_names(rows: list[dict]) -> list[str]:
    names = list(dict.fromkeys(name for row in rows for name in row["groups"]))  # every variant any row has
    names.sort(key=lambda name: (name != "views off", name != "views on", "reverse-pairs" in name))
    return names


def pooled_table(rows: list[dict]) -> str:
    """Per probe and metric: each variant's mean ± std over all runs, and its mean paired gain over 'views off'."""
    names = variant_names(rows)
    lines = [
        "| probe | metric | caches | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for probe in dict.fromkeys(row["probe"] for row in rows):
        mine = [row for row in rows if row["probe"] == probe]
        for metric, label in (("top1", "top-1"), ("pair_accuracy", "pair")):
            cells = []
            for name in names:
                values, gains = [], []
                for row in mine:
                    test, off = row["groups"].get(name, {}).get("test", {}), row["groups"]["views off"]["test"]
                    values += test.get(metric, [])
                    gains += [a - b for a, b in zip(test.get(metric, []), off.get(metric, []), strict=False)]
                gain = "" if name == "views off" or not gains else f" ({100 * np.mean(gains):+.1f})"
                cells.append(mean_std(values) + gain if values else "–")
            lines.append(f"| {probe} | {label} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    names = variant_names(rows)
    header = " | ".join(f"{name}: test top-1 | pair" for name in names)
    lines = [
        f"| cache | views | train / test | T | probe | {header} |",
        "|---|---:|---|---:|---|" + "---:|---:|" * len(names),
    ]
    for row in rows:
        cells = variant_cells(row, names)
        lines.append(
            f"| {Path(row['cache']).parent.name or row['cache']} | {row['views_per_clip']} | {row['train_clips']} / "
            f"{row['test_clips']} | {row['frames']} | {row['probe']} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.table:
        rows = read_rows(args.table)
        print(pooled_table(rows) if args.pooled else table(rows))
        return
    for cache, probe in pending(args.out, args.caches, args.probes):
        row = measure(cache, probe, args.seeds, args)
        append_row(args.out, row)
        if not row["views_per_clip"]:
            print(f"{cache}: no augmented views (extract --views N): 'views on' trained on clean clips", flush=True)
        figures = ", ".join(f"{name} {mean_std(group['test']['top1'])}" for name, group in row["groups"].items())
        print(f"{cache} {probe}: test top-1 {figures}; {row['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
