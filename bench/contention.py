"""Stage two (and extract) beside CPU-bound processes: does a run slow down by its fair share, or collapse?

For each k in --busy it starts k busy-loop processes, runs every task once per setting back to back (so settings
are compared under the same load), stops the busy loops, and prints each time and its ratio to the same task and
setting with k = 0. A fair share on C cores beside k busy processes is about (C + k) / C x idle when the run uses
C threads; OpenMP's spin-waiting made it far worse (docs/performance.md "Shared CPUs / contention").

    python bench/contention.py --cache demo/shards --videos demo            # demo cache made by `step-cache demo`
    python bench/contention.py --cache demo/shards --busy 0,4 --setting default --setting spin=GOMP_SPINCOUNT=300000

Tasks: ``attentive`` (train-probe --probe attentive --seeds 3 --epochs 20), ``step`` (train-probe --probe step
--epochs 10), both with --no-early-stop so every setting trains the same epochs, and ``extract`` (vit-tiny,
random weights, 112 px, 8 frames, into a temporary directory; needs --videos).
Settings: ``default`` (the CLI as shipped), ``legacy`` (libgomp's own spin count, i.e. before
step_cache.cpu_budget limited it), ``passive`` (OMP_WAIT_POLICY=PASSIVE), ``threads1`` (--threads 1), or
NAME=VAR=VALUE[,VAR=VALUE] for any environment, and NAME=--threads=N for a thread count.
The machine's load (os.getloadavg) is printed before each k: figures taken on a shared machine say so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILTIN = {
    "default": ({}, []),
    "legacy": ({"GOMP_SPINCOUNT": "300000"}, []),  # libgomp's default spin count (OMP_WAIT_POLICY unset)
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, []),
    "threads1": ({}, ["--threads", "1"]),
}
TASKS = ("attentive", "step", "extract")
BUSY_LOOP = "while True:\n    pass\n"


def parse_setting(text: str) -> tuple[str, dict[str, str], list[str]]:
    if text in BUILTIN:
        return text, *BUILTIN[text]
    name, _, spec = text.partition("=")
    if not spec:
        raise SystemExit(f"--setting {text!r}: use one of {', '.join(BUILTIN)} or NAME=VAR=VALUE[,VAR=VALUE]")
    env: dict[str, str] = {}
    args: list[str] = []
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key == "--threads":
            args += ["--threads", value]
        else:
            env[key] = value
    return name, env, args


def command(task: str, cache: Path, videos: Path | None, work: Path, extra: list[str]) -> list[str]:
    cli = [sys.executable, "-m", "cli"]
    if task == "attentive":
        return [*cli, "train-probe", str(cache), "--probe", "attentive", "--seeds", "3", "--epochs", "20",
                "--out", str(work / "attentive"), "--overwrite", "--quiet", "--no-early-stop", *extra]  # fmt: skip
    if task == "step":
        return [*cli, "train-probe", str(cache), "--probe", "step", "--epochs", "10", "--out", str(work / "step"),
                "--overwrite", "--quiet", "--no-early-stop", *extra]  # fmt: skip
    if videos is None:
        raise SystemExit("the extract task needs --videos")
    annotations = ["--annotations", str(videos / "annotations.csv")] if (videos / "annotations.csv").is_file() else []
    return [*cli, "extract", "--videos", str(videos), *annotations, "--out", str(work / "shards"), "--overwrite",
            "--backbone", "vit-tiny", "--weights", "random", "--image-size", "112", "--frames", "8", "--quiet",
            *extra]  # fmt: skip


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="shard directory to train on (the demo cache)")
    parser.add_argument("--videos", type=Path, help="videos for the extract task (the demo's folder)")
    parser.add_argument("--busy", default="0,2,4", help="numbers of busy-loop processes beside the run")
    parser.add_argument("--tasks", default="attentive,step", help=f"comma-separated among {', '.join(TASKS)}")
    parser.add_argument("--setting", action="append", help="repeatable; default: default and legacy")
    parser.add_argument("--repeat", type=int, default=1, help="runs per task, setting and k (the minimum is kept)")
    args = parser.parse_args()
    settings = [parse_setting(text) for text in (args.setting or ["default", "legacy"])]
    tasks = [task for task in args.tasks.split(",") if task]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown task(s) {', '.join(unknown)}; choose among {', '.join(TASKS)}")
    busy_counts = [int(k) for k in args.busy.split(",")]
    root = Path(__file__).resolve().parents[1]
    base_env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS"):
        base_env.pop(name, None)  # each setting starts from the shipped defaults
    work = Path(tempfile.mkdtemp(prefix="contention-"))
    times: dict[tuple[str, str, int], float] = {}
    print(f"{os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))}); python {sys.version.split()[0]}")
    try:
        for k in busy_counts:
            load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"-- beside {k} busy-loop processes (load average before starting them: {load})", flush=True)
            busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(k)]
            try:
                for task in tasks:
                    for name, env, extra in settings:
                        argv = command(task, args.cache, args.videos, work, extra)
                        best = min(timed(argv, {**base_env, **env}) for _ in range(args.repeat))
                        times[(task, name, k)] = best
                        idle = times.get((task, name, 0))
                        ratio = f"{best / idle:5.2f}x idle" if idle else ""
                        print(f"{task:10s} {name:10s} k={k}  {best:7.1f} s  {ratio}", flush=True)
            finally:
                for process in busy:
                    process.kill()
                for process in busy:
                    process.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| task | setting | " + " | ".join(f"beside {k}" for k in busy_counts) + " |")
    print("|---|---|" + "---:|" * len(busy_counts))
    for task in tasks:
        for name, _, _ in settings:
            cells = []
            for k in busy_counts:
                value, idle = times.get((task, name, k)), times.get((task, name, 0))
                ratio = f" ({value / idle:.1f}x)" if value and idle and k else ""
                cells.append(f"{value:.1f} s{ratio}" if value else "–")
            print(f"| {task} | {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
