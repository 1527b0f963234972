"""Defaults vs. swept best, pooled over replicate datasets (docs/training.md, "The smallest automatic batch is 16").

On 21-22 test videos one dataset's ratio moves by up to ±0.4 between datasets of the same settings, so the small
benchmarks are judged pooled: the runs (datasets x seeds) of the default against the runs of each dataset's own
sweep winner (chosen on that dataset's val). Rows come from ``bench/defaults.py`` output files: the sweeps from
full runs (``--sweeps``), the defaults from ``--defaults-only`` runs (``--defaults``; a later file wins), so a
changed default is re-measured without re-running the sweep.

    python bench/defaults_pooled.py --sweeps defaults.jsonl reps.jsonl --defaults batch16.jsonl \\
        --group s8=s8,s8b,s8c --group k16=k16,k16b,k16c --group h32=h32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from result_rows import cache_name, mean_std

PROBES = ("linear", "attentive", "self-attentive", "step")


def rows(paths: list[Path]) -> dict[tuple[str, str], dict]:
    """(cache folder name, probe) -> row; a later file's row replaces an earlier one."""
    found = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                found[(cache_name(row["cache"]), row["probe"])] = row
    return found


def pooled_table(sweeps: dict, defaults: dict, groups: dict[str, list[str]]) -> str:
    lines = [
        "| benchmark | probe | metric | default | swept best (chosen on val) | default / best |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, caches in groups.items():
        for probe in PROBES:
            keys = [(cache, probe) for cache in caches]
            if not all(key in sweeps and key in defaults for key in keys):
                continue
            metric = "pair_accuracy" if probe == "step" else "top1"  # order-blind probes: pair is chance
            default = [v for key in keys for v in defaults[key]["groups"]["default"]["test"][metric]]
            best = [v for key in keys for v in sweeps[key]["groups"][sweeps[key]["best"]]["test"][metric]]
            label = f"{name} ({len(caches)} datasets)" if len(caches) > 1 else name
            lines.append(
                f"| {label} | {probe} | {'pair' if metric == 'pair_accuracy' else 'top-1'} | {mean_std(default)} "
                f"| {mean_std(best)} | {np.mean(default) / np.mean(best):.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", nargs="+", type=Path, required=True, help="bench/defaults.py files with sweeps")
    parser.add_argument("--defaults", nargs="*", type=Path, default=[], help="--defaults-only files (win)")
    parser.add_argument("--group", action="append", required=True, help="NAME=CACHE,CACHE,... (folder names)")
    args = parser.parse_args()
    sweeps = rows(args.sweeps)
    defaults = {**sweeps, **rows(args.defaults)}
    groups = {name: caches.split(",") for name, caches in (text.split("=", 1) for text in args.group)}
    print(pooled_table(sweeps, defaults, groups))


if __name__ == "__main__":
    main()
