"""The GPU benchmark: one command to run the first time a GPU is lent, each section under its own timeout, JSON out.

    python bench/gpu.py --json gpu.json                       # on a GPU: about 8 minutes at the default sizes
    python bench/gpu.py --small --json cpu.json               # on a CPU, tiny sizes (what the test suite runs)
    python bench/gpu.py --sections backbone,stacked --json -  # some sections only, JSON to stdout

Sections (each in a process of its own, killed at its timeout; a failed or timed-out section records why and the
others still run):

  backbone  the ceiling: batched forward on frames already on the device (frames/s; MFU against --peak-tflops),
            and the full TokenComputer + FrameBatcher loop on host frames ÷ that ceiling (goal >= 0.95)
  copies    host-to-device and device-to-host GB/s, pinned and pageable
  host      each host limit alone: int8 quantise, shard write + fsync + sha256, pipe (pickle) / concatenate /
            pin of decoded frames, the CPU decode pool at 480p and 1080p, torchcodec on CUDA (when present)
  extract   end-to-end extract (decord; torchcodec-cuda on CUDA) ÷ the backbone ceiling, GPU utilisation (NVML),
            and the binding limit named (goal >= 0.85)
  tokens    stage-two token reads, GB/s four ways: numpy gather, pageable copy, pinned copy, streaming readers
            (4 and cores - 2)
  train     clips/s of train_probe with the tokens on the device (--data device) vs in memory, data-wait share
  stacked   one stacked training step, K = 16 vs K = 1 (goal <= 2x), device syncs and host tensors per step
  tf32      a STEP probe step with TF32 matmuls on and off: step time and the max logit difference

On a CPU every section runs (CUDA-only figures are null with the reason): the test suite runs it with --small
--in-process (tests/test_bench_gpu.py) so that it works the first time a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from gpu_stage_one import backbone, copies, extract, host  # bench/ is on the path of a bench script
from gpu_stage_two import stacked, tf32, tokens, train

SECTIONS = {
    "backbone": backbone,
    "copies": copies,
    "host": host,
    "extract": extract,
    "tokens": tokens,
    "train": train,
    "stacked": stacked,
    "tf32": tf32,
}
TIMEOUTS = {  # seconds per section at the default sizes; --small divides by 4 (at least 60 s)
    "backbone": 90,
    "copies": 30,
    "host": 90,
    "extract": 120,
    "tokens": 60,
    "train": 60,
    "stacked": 40,
    "tf32": 30,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, in this order")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default=None, help="default: dinov2-b on CUDA, vit-tiny on CPU / --small")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU, the test suite)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (H100: 989)")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every section's timeout")
    parser.add_argument("--json", default=None, help="write the figures here ('-': stdout)")
    parser.add_argument(
        "--in-process", action="store_true", help="run the sections in this process, without timeouts (the test)"
    )
    parser.add_argument("--section", default=None, help=argparse.SUPPRESS)  # internal: run one section
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_one(args: argparse.Namespace) -> None:
    """Inside the section's own process: run it and write its figures."""
    started = time.perf_counter()
    figures = SECTIONS[args.section](args)
    figures["seconds"] = round(time.perf_counter() - started, 2)
    args.result.write_text(json.dumps(figures, indent=2, default=str))


def run_section(name: str, argv: list[str], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, __file__, *argv, "--section", name, "--result", str(result)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if done.returncode != 0 or not result.is_file():
            lines = (done.stderr or done.stdout or "").strip().splitlines()
            return {"error": f"exit {done.returncode}: {lines[-1] if lines else 'no output'}"}
        return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.section:
        run_one(args)
        return {}
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    forwarded = [a for a in argv if not a.startswith("--json")]
    if "--json" in argv:  # drop the value that followed a separate --json
        index = argv.index("--json")
        forwarded = argv[:index] + argv[index + 2 :]
    report: dict[str, Any] = {
        "machine": {
            "device": args.device,
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "cores": os.cpu_count(),
            "load_average": os.getloadavg()[0],
            "torch": torch.__version__,
            "small": args.small,
        }
    }
    for name in names:
        timeout = TIMEOUTS[name] * args.timeout_scale
        if args.small:
            timeout = max(60.0, timeout / 4) * args.timeout_scale
        started = time.perf_counter()
        if args.in_process:
            report[name] = SECTIONS[name](args)
        else:
            report[name] = run_section(name, forwarded, timeout)
        print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    text = json.dumps(report, indent=2, default=str)
    if args.json == "-":
        print(text)
    elif args.json:
        Path(args.json).write_text(text)
    return report


if __name__ == "__main__":
    main()
