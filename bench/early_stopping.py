"""Early stopping against the full schedule (docs/training.md, "Early stopping").

For every cache and probe this runs ``train-probe`` with the defaults and ``--seeds S`` twice — early stopping on
(the default) and ``--no-early-stop`` — and records, per seed, the epochs trained, the best epoch and the **test**
figures of the best checkpoint (chosen on val). One JSON line per (cache, probe) goes to --out. Run directories go
to --runs and are reused (``--resume``: a finished run is read back, a killed one continued), so an interrupted
bench picks up where it stopped.

Time saved is reported as epochs: a seed that stops leaves the stack, so the stack's training work is the sum of
its seeds' epochs (plus validation of the active seeds). Wall times (the run's own ``train_time_s``, training
epochs only, and the call's wall clock) are printed too; they depend on what else the machine runs.

    python bench/early_stopping.py CACHE [CACHE ...] --out early_stopping.jsonl [--probes step linear] [--seeds 3]
    python bench/early_stopping.py --table early_stopping.jsonl     # the markdown table of docs/training.md

A cache is named by its directory (``/work/benchcaches/s8/shards`` -> ``s8``: the parent of a ``shards`` dir).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from step_cache.training.trainer import train_probe

PROBES = ("linear", "attentive", "self-attentive", "step")
MODES = {"early": {"early_stop": True}, "full": {"early_stop": False}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("early_stopping.jsonl"))
    parser.add_argument("--runs", type=Path, default=Path("runs/early-stopping"), help="run directories (reused)")
    parser.add_argument("--probes", nargs="+", default=list(PROBES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES), default=list(MODES),
        help="train only these (e.g. two processes: one per mode); a line goes to --out once both are there",
    )  # fmt: skip
    parser.add_argument("--table", type=Path, help="print the table of a --out file and exit")
    return parser.parse_args()


def cache_name(path: Path) -> str:
    return path.parent.name if path.name == "shards" else path.name


def run_once(cache: Path, probe: str, out: Path, seeds: int, mode: str) -> dict:
    """One train-probe run (or the finished one in ``out``): per seed, epochs run, best epoch and test figures."""
    started = time.perf_counter()
    result = train_probe(
        cache, probe, out, resume=(out / "config.json").is_file(), seeds=seeds, progress=False, **MODES[mode]
    )
    wall = time.perf_counter() - started
    metrics = result.metrics
    per_seed = metrics.get("per_seed") or [{**metrics, "seed": metrics.get("seed", 0)}]
    planned = metrics["epochs"]
    return {
        "planned_epochs": planned,
        # runs written before early stopping existed have no record: they ran every planned epoch
        "epochs": [(s.get("early_stop") or {}).get("epoch", planned) for s in per_seed],
        "best_epochs": [s["best_epoch"] for s in per_seed],
        "patience": (per_seed[0].get("early_stop") or {}).get("patience"),
        "test_top1": [s["test"]["top1"] for s in per_seed],
        "test_pair": [s["test"].get("pair_accuracy") for s in per_seed],
        "train_time_s": metrics["train_time_s"],
        "wall_s": wall,
    }


def mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def table(lines: list[dict]) -> str:
    rows = [
        "| cache | probe | planned epochs | patience | epochs run per seed | epochs saved | best epoch (early / full) "
        "| test top-1 full | test top-1 early | difference | training time full / early (s) |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    by_cache: dict[str, list[float]] = {}
    for line in lines:
        full, early = line["full"], line["early"]
        saved = 1 - sum(early["epochs"]) / sum(full["epochs"])
        difference = 100 * (mean(early["test_top1"]) - mean(full["test_top1"]))
        by_cache.setdefault(line["cache"], []).append(difference)
        rows.append(
            f"| {line['cache']} | {line['probe']} | {full['planned_epochs']} | {early['patience']} | "
            f"{', '.join(map(str, early['epochs']))} | {100 * saved:.0f} % | "
            f"{', '.join(map(str, early['best_epochs']))} / {', '.join(map(str, full['best_epochs']))} | "
            f"{100 * mean(full['test_top1']):.1f} | {100 * mean(early['test_top1']):.1f} | {difference:+.1f} | "
            f"{full['train_time_s']:.0f} / {early['train_time_s']:.0f} |"
        )
    rows.append("")
    rows.append("| cache | mean difference over probes (points of test top-1) | largest |")
    rows.append("|---|---:|---:|")
    for cache, differences in by_cache.items():
        rows.append(f"| {cache} | {mean(differences):+.1f} | {max(differences, key=abs):+.1f} |")
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    if args.table is not None:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    for cache in args.caches:
        name = cache_name(cache)
        for probe in args.probes:
            line = {"cache": name, "probe": probe, "seeds": args.seeds}
            for mode in args.modes:
                line[mode] = run_once(cache, probe, args.runs / name / probe / mode, args.seeds, mode)
                print(f"{name} {probe} {mode}: epochs {line[mode]['epochs']}", flush=True)
            if set(args.modes) != set(MODES):
                continue
            with args.out.open("a") as out:
                out.write(json.dumps(line) + "\n")
            full, early = line["full"], line["early"]
            print(
                f"{name} {probe}: epochs {sum(early['epochs'])}/{sum(full['epochs'])} | test top-1 full "
                f"{100 * mean(full['test_top1']):.1f} early {100 * mean(early['test_top1']):.1f} | training "
                f"{full['train_time_s']:.0f} s / {early['train_time_s']:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
