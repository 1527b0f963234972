"""Where the time of a small-data run goes: training steps, per-epoch validation, commits (state, checkpoints,
records, fsyncs), the first optimizer (torch imports dynamo), loading, final metrics.

    python bench/small_run.py SHARDS --probe step                 # train-probe's defaults (automatic schedule)
    python bench/small_run.py SHARDS --epochs 200 --commit-every 0  # commit every epoch, as before run_commits

It runs ``train_probe`` in this process under cProfile (which adds a few per cent) and prints the cumulative
seconds of each part and its share of the wall time. Figures depend on the machine's load: print ``uptime`` too.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

from step_cache.cpu_budget import limit_spin_wait

limit_spin_wait()  # as the CLI does, before torch loads

from step_cache.cpu_budget import apply_threads  # noqa: E402
from step_cache.training import run_commits  # noqa: E402
from step_cache.training.trainer import train_probe  # noqa: E402

# (label, file suffix, function name) of the parts, as cProfile names them
PARTS = (
    ("training steps", "training/trainer.py", "train_epoch"),
    ("validation", "training/trainer.py", "evaluate"),
    ("commits", "training/trainer.py", "commit"),
    ("metrics.jsonl appends", "training/run_commits.py", "append_epoch"),
    ("first optimizer (dynamo import)", "training/trainer.py", "build_optimizer"),
    ("loading tokens", "training/trainer.py", "open_data"),
    ("final metrics", "training/trainer.py", "final_metrics"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", type=Path)
    parser.add_argument("--probe", default="step")
    parser.add_argument("--epochs", type=int, help="default: the automatic schedule")
    parser.add_argument("--commit-every", type=float, help="seconds between commits (default: run_commits')")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    choice = apply_threads(args.threads)
    if args.commit_every is not None:
        run_commits.COMMIT_EVERY_S = args.commit_every
    out = Path(tempfile.mkdtemp(prefix="small-run-")) / "run"
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    result = train_probe(args.shards, args.probe, out, epochs=args.epochs, progress=False)
    profile.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; {choice.count} threads ({choice.source})")
    print(result.summary())
    epochs = result.metrics.get("early_stop", {}).get("epoch") or result.metrics.get("epochs")  # trained, not planned
    print(f"wall {wall:.1f} s for {epochs} epochs ({1000 * wall / max(1, epochs or 1):.0f} ms per epoch)")
    for label, suffix, name in PARTS:
        seconds = sum(v[3] for (file, _, func), v in stats.items() if func == name and file.endswith(suffix))
        print(f"  {label:32s} {seconds:7.1f} s  {100 * seconds / wall:5.1f} %")


if __name__ == "__main__":
    main()
