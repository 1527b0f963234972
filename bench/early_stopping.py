"""Early stopping against the full schedule (docs/training.md, "Early stopping").

For every cache and probe this trains the defaults with S seeds as one stack (``train-probe --seeds S``'s stack:
``StackedRun``, seeds sharing the first seed's batches and splits) over the **full** schedule
(``--no-early-stop``), and watches each seed: at the epoch where early stopping would stop it — for the default
rule and for other patience shares, to judge the rule — it evaluates that seed's best checkpoint so far on the
**test** split. That is exactly what the early-stopped run returns, because the learning-rate schedule does not
depend on the stop: a stopped run is the full run's first epochs and its best checkpoint the full run's best among
them (``tests/test_early_stopping.py`` checks it figure for figure). So one full run gives both columns.
``--verify`` also runs the real early-stopped ``train_probe(..., seeds=S)`` and prints its figures beside the
observed ones.

Time saved is reported as epochs: a seed that stops leaves the stack, so a stack's training work is the sum of its
seeds' epochs. The full run's training time (seconds in training epochs, ``train_time_s``) is recorded too; it
depends on what else the machine runs.

    python bench/early_stopping.py CACHE [CACHE ...] --out early_stopping.jsonl [--probes step linear] [--seeds 3]
    python bench/early_stopping.py --table early_stopping.jsonl     # the markdown tables of docs/training.md

A cache is named by its directory (``/work/benchcaches/s8/shards`` -> ``s8``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from result_rows import cache_name

from step_cache.cache.shards import open_shards
from step_cache.training.config import make_config
from step_cache.training.early_stopping import MIN_PATIENCE, PATIENCE_SHARE, should_stop
from step_cache.training.stacking.shared_data import DataCache
from step_cache.training.stacking.stacked_run import StackedRun
from step_cache.training.trainer import train_probe

PROBES = ("linear", "attentive", "self-attentive", "step")
SHARES = (0.1, 0.2, PATIENCE_SHARE, 0.5)  # patience = max(MIN_PATIENCE, ceil(share x planned epochs))


class WatchedRun(StackedRun):
    """The full schedule, noting for each seed and patience share where early stopping would stop it, and the test
    figures of its best checkpoint at that moment."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stops: dict[tuple[float, int], dict[str, Any]] = {}

    def run_epoch(self, epoch: int, on_epoch: Any) -> None:
        super().run_epoch(epoch, on_epoch)
        for share in SHARES:
            for member, config in enumerate(self.configs):
                patience = max(MIN_PATIENCE, math.ceil(share * config.epochs))
                rule = dataclasses.replace(config, early_stop=True, patience=patience)
                if (share, member) in self.stops or not should_stop(rule, epoch + 1, self.best_epoch[member]):
                    continue
                index = torch.tensor([member], device=self.device)  # no member leaves a full run: slot = member
                best = self.stack.subset(index, {name: value[index] for name, value in self.best_params.items()})
                test = self.evaluate(self.data.splits.test, orders=False, stack=best)[0]
                self.stops[(share, member)] = {
                    "epoch": epoch + 1, "best_epoch": self.best_epoch[member], "patience": patience,
                    "test_top1": test["top1"], "test_pair": test.get("pair_accuracy"),
                }  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("caches", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=Path("early_stopping.jsonl"))
    parser.add_argument("--probes", nargs="+", default=list(PROBES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--verify", type=Path, help="also run the real early-stopped train-probe into this folder")
    parser.add_argument("--table", type=Path, help="print the tables of a --out file and exit")
    return parser.parse_args()


def watch(cache: Path, probe: str, seeds: int) -> dict[str, Any]:
    """One full-schedule stack of ``seeds`` seeds: its own figures, and the early stops it passed through."""
    shards = open_shards(cache)
    configs = [make_config(probe, {"seed": s, "early_stop": False, "progress": False}) for s in range(seeds)]
    data = DataCache(shards)
    try:
        run = WatchedRun(data.get(configs[0]), configs)
        results = run.run()
    finally:
        data.close()
    planned = run.configs[0].epochs
    full = {
        "epochs": [planned] * seeds, "best_epochs": [r.metrics["best_epoch"] for r in results],
        "test_top1": [r.metrics["test"]["top1"] for r in results],
        "test_pair": [r.metrics["test"].get("pair_accuracy") for r in results],
    }  # fmt: skip
    rules = {}
    for share in SHARES:
        stops = [run.stops.get((share, m)) for m in range(seeds)]
        # A seed the rule never stops runs the full schedule: its figures are the full run's.
        rules[str(share)] = {
            "patience": max(MIN_PATIENCE, math.ceil(share * planned)),
            "epochs": [s["epoch"] if s else planned for s in stops],
            "best_epochs": [s["best_epoch"] if s else b for s, b in zip(stops, full["best_epochs"], strict=True)],
            "test_top1": [s["test_top1"] if s else t for s, t in zip(stops, full["test_top1"], strict=True)],
            "test_pair": [s["test_pair"] if s else t for s, t in zip(stops, full["test_pair"], strict=True)],
        }
    return {"planned_epochs": planned, "train_time_s": run.training_time.seconds, "full": full, "rules": rules}


def verify(cache: Path, probe: str, seeds: int, out: Path) -> dict[str, Any]:
    result = train_probe(cache, probe, out, overwrite=True, seeds=seeds, progress=False)
    per_seed = result.metrics["per_seed"]
    return {
        "epochs": [s["early_stop"]["epoch"] for s in per_seed],
        "test_top1": [s["test"]["top1"] for s in per_seed],
        "train_time_s": result.metrics["train_time_s"],
    }


def mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def table(lines: list[dict]) -> str:
    default = str(PATIENCE_SHARE)
    rows = [
        f"Default rule (patience = max({MIN_PATIENCE}, ceil({PATIENCE_SHARE} x planned epochs))), test top-1 (mean "
        "over seeds; a seed = its best checkpoint):",
        "",
        "| cache | probe | planned epochs | patience | epochs run per seed | epochs saved | best epoch per seed "
        "(early / full) | test top-1 full | test top-1 early | difference (points) |",
        "|---|---|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    by_cache: dict[str, list[dict]] = {}
    for line in lines:
        by_cache.setdefault(line["cache"], []).append(line)
        full, early = line["full"], line["rules"][default]
        saved = 1 - sum(early["epochs"]) / sum(full["epochs"])
        difference = 100 * (mean(early["test_top1"]) - mean(full["test_top1"]))
        rows.append(
            f"| {line['cache']} | {line['probe']} | {line['planned_epochs']} | {early['patience']} | "
            f"{', '.join(map(str, early['epochs']))} | {100 * saved:.0f} % | "
            f"{', '.join(map(str, early['best_epochs']))} / {', '.join(map(str, full['best_epochs']))} | "
            f"{100 * mean(full['test_top1']):.1f} | {100 * mean(early['test_top1']):.1f} | {difference:+.1f} |"
        )
    rows += [
        "",
        "Per benchmark, over its probes: epochs saved and mean difference in test top-1 (points; the worst probe's "
        "in brackets), for the default and other patience shares:",
        "",
        "| cache | " + " | ".join(f"{s}: epochs saved | {s}: difference" for s in SHARES) + " |",
        "|---|" + "---:|---:|" * len(SHARES),
    ]
    for cache, group in by_cache.items():
        cells = []
        for share in map(str, SHARES):
            run = sum(sum(line["rules"][share]["epochs"]) for line in group)
            planned = sum(sum(line["full"]["epochs"]) for line in group)
            differences = [
                100 * (mean(line["rules"][share]["test_top1"]) - mean(line["full"]["test_top1"])) for line in group
            ]
            worst = min(differences)
            cells.append(f"{100 * (1 - run / planned):.0f} % | {mean(differences):+.1f} ({worst:+.1f})")
        rows.append(f"| {cache} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    args = parse_args()
    if args.table is not None:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    for cache in args.caches:
        name = cache_name(str(cache))
        for probe in args.probes:
            started = time.perf_counter()
            line = {"cache": name, "probe": probe, "seeds": args.seeds, **watch(cache, probe, args.seeds)}
            line["wall_s"] = time.perf_counter() - started
            early = line["rules"][str(PATIENCE_SHARE)]
            message = (
                f"{name} {probe}: epochs {sum(early['epochs'])}/{sum(line['full']['epochs'])} | test top-1 full "
                f"{100 * mean(line['full']['test_top1']):.1f} early {100 * mean(early['test_top1']):.1f}"
            )
            if args.verify is not None:
                line["verify"] = verify(cache, probe, args.seeds, args.verify / name / probe)
                message += f" | real early run: epochs {line['verify']['epochs']}, test top-1 " + ", ".join(
                    f"{100 * v:.1f}" for v in line["verify"]["test_top1"]
                )
            with args.out.open("a") as out:
                out.write(json.dumps(line) + "\n")
            print(message, flush=True)


if __name__ == "__main__":
    main()
