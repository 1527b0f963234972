"""Do the default training settings work on data they were not tuned on? (docs/training.md, "Default schedule")

For every cache and probe this trains, as stacked batches (``train_stacked``: seeds and learning rates are member
settings, so each group below is one run):

- the defaults (automatic epochs and batch size, the probe's default learning rate), seeds F..F+S-1 (F:
  --first-seed, default 0; other seeds of the same benchmark go to another --out file);
- a small sweep: learning rates {1e-3, 3e-3, 1e-2} x recipes {30 epochs at batch 64 (the old defaults),
  100 epochs at batch 16 (the old demo recipe)}, seeds 0..S-1 each.

The sweep's best configuration is chosen on **validation** top-1 (mean over seeds); both it and the defaults are
reported on the **test** split (mean ± std over seeds). One JSON line per (cache, probe) goes to --out.

    python bench/defaults.py CACHE [CACHE ...] --out defaults.jsonl [--probes step linear] [--seeds 3]
    python bench/defaults.py --table defaults.jsonl      # the markdown table of docs/training.md

``--options '{"avgpool": true}'`` passes probe options to every run (one JSON object; the row records it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from result_rows import append_row, cache_name, mean_std, pending
from stacked_groups import train_groups

from step_cache.cache.shards import open_shards
from step_cache.training.config import make_config, with_schedule
from step_cache.training.splits import shard_splits

PROBES = ("linear", "attentive", "self-attentive", "step")
SWEEP_LRS = (1e-3, 3e-3, 1e-2)
SWEEP_RECIPES = ({"epochs": 30, "batch_size": 64}, {"epochs": 100, "batch_size": 16})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("defaults.jsonl"))
    parser.add_argument("--probes", nargs="+", default=list(PROBES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="the defaults' seeds are F..F+S-1")
    parser.add_argument("--defaults-only", action="store_true", help="skip the sweep (re-measure the defaults)")
    parser.add_argument("--lrs", nargs="+", type=float, default=list(SWEEP_LRS), help="the sweep's learning rates")
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=[f"{r['epochs']}x{r['batch_size']}" for r in SWEEP_RECIPES],
        help="the sweep's schedules as EPOCHSxBATCH (default: 30x64 100x16)",
    )
    parser.add_argument(
        "--options", type=json.loads, default={}, help="probe options as one JSON object, e.g. '{\"avgpool\": true}'"
    )
    parser.add_argument("--table", type=Path, help="print the table of a --out file and exit")
    return parser.parse_args()


def parse_recipe(text: str) -> dict[str, int]:
    epochs, batch_size = text.lower().split("x")
    return {"epochs": int(epochs), "batch_size": int(batch_size)}


def measure(
    cache: Path,
    probe: str,
    seeds: int,
    defaults_only: bool,
    lrs: tuple[float, ...] = SWEEP_LRS,
    recipes: tuple[dict[str, int], ...] = SWEEP_RECIPES,
    first_seed: int = 0,
    probe_options: dict | None = None,
) -> dict:
    shards = open_shards(cache)
    base = {"progress": False, "data": "memory", "probe_options": dict(probe_options or {})}
    groups = {"default": [make_config(probe, {**base, "seed": first_seed + s}) for s in range(seeds)]}
    if not defaults_only:
        for recipe in recipes:
            for lr in lrs:
                name = f"lr {lr:g}, {recipe['epochs']} ep, batch {recipe['batch_size']}"
                groups[name] = [make_config(probe, {**base, **recipe, "lr": lr, "seed": s}) for s in range(seeds)]
    by_group, seconds = train_groups(shards, groups)
    swept = {name: group for name, group in by_group.items() if name != "default"}
    best = max(swept, key=lambda name: np.mean(swept[name]["val"]["top1"])) if swept else None
    splits = shard_splits(shards)
    resolved = with_schedule(groups["default"][0], len(splits.train))
    return {
        "cache": str(cache),
        "probe": probe,
        "probe_options": dict(probe_options or {}),
        "train_clips": len(splits.train),
        "val_clips": len(splits.val),
        "test_clips": len(splits.test),
        "frames": shards.manifest.frames,
        "classes": len(shards.classes),
        "default_seeds": [config.seed for config in groups["default"]],
        "default_schedule": {"epochs": resolved.epochs, "batch_size": resolved.batch_size, "lr": resolved.lr},
        "groups": by_group,
        "best": best,
        "seconds": seconds,
    }


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| cache | train / val / test | T | probe | default (epochs, batch) | default test top-1 | default test pair"
        " | best of sweep (chosen on val) | its test top-1 | its test pair | default / best: top-1 | pair |",
        "|---|---|---:|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        default, best = row["groups"]["default"]["test"], row["groups"].get(row["best"], {}).get("test", {})
        pair, best_pair = default.get("pair_accuracy") or default["top1"], best.get("pair_accuracy") or best.get("top1")
        ratio = f"{np.mean(pair) / np.mean(best_pair):.2f}" if best_pair else "–"
        top1 = f"{np.mean(default['top1']) / np.mean(best['top1']):.2f}" if best.get("top1") else "–"
        schedule = row["default_schedule"]
        lines.append(
            f"| {cache_name(row['cache'])} | {row['train_clips']} / {row['val_clips']} / "
            f"{row['test_clips']} | {row['frames']} | {row['probe']} | {schedule['epochs']}, {schedule['batch_size']} "
            f"| {mean_std(default['top1'])} | {mean_std(default.get('pair_accuracy', []))} | {row['best'] or '–'} | "
            f"{mean_std(best.get('top1', []))} | {mean_std(best.get('pair_accuracy', []))} | {top1} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.table:
        print(table(args.table))
        return
    recipes = tuple(parse_recipe(text) for text in args.recipes)
    for cache, probe in pending(args.out, args.caches, args.probes):
        row = measure(
            cache, probe, args.seeds, args.defaults_only, tuple(args.lrs), recipes, args.first_seed, args.options
        )
        append_row(args.out, row)
        default = row["groups"]["default"]["test"]
        print(
            f"{cache} {probe}: default test top-1 {mean_std(default['top1'])}, pair "
            f"{mean_std(default.get('pair_accuracy', []))}; best {row['best']}; {row['seconds']:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
