"""Live ``Recognizer`` vs ``timeline`` on the same video, window and stride: both times and their ratio.

Builds a small run first (a few generated training videos extracted with the backbone, a STEP probe trained for
one epoch: only its cost matters), then on a generated untrimmed video:
  timeline     step_cache.recognition.timeline.run_timeline (decodes the video itself)
  Recognizer   the video decoded once (timed apart), then every frame pushed in order; a prediction per window
Both see the same windows (--window, --stride): the windows and their logits are checked to agree.

    python bench/recognizer.py                                   # vit-tiny, 20 s video, stride 0.5 s
    python bench/recognizer.py --backbone dinov2-s --seconds 20 --stride 0.5 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stream import (  # bench/stream.py: the same small run (bench/ is on the path of a bench script)
    build_run,
    long_video,
)

from step_cache.extraction.video import decode_clips
from step_cache.recognition.model import RunModel
from step_cache.recognition.recognizer import Recognizer
from step_cache.recognition.timeline import run_timeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit-tiny")
    parser.add_argument("--frames", type=int, default=16, help="T of the run")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--clip-seconds", type=float, default=2.0, help="training videos: the default window")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the untrimmed video")
    parser.add_argument("--window", type=float, default=None, help="seconds (default: the training videos')")
    parser.add_argument("--stride", type=float, default=0.5, help="seconds between window starts")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = build_run(root, args)
        video, total = long_video(root, args), round(args.seconds * args.fps)
        model = RunModel(run, device=args.device)
        run_timeline(model, video, window=args.window, stride=args.stride, progress=False)  # warm-up
        started = time.perf_counter()
        reference = run_timeline(model, video, window=args.window, stride=args.stride, progress=False)
        timeline_s = time.perf_counter() - started

        started = time.perf_counter()
        frames = decode_clips(video, total).frames
        decode_s = time.perf_counter() - started
        recognizer = Recognizer(run, fps=args.fps, window=args.window, stride=args.stride, device=args.device)
        started = time.perf_counter()
        predictions = [p for frame in frames if (p := recognizer.push(frame)) is not None]
        push_s = time.perf_counter() - started
    by_start = {r.window.start: r.logits for r in reference.results}
    shared = [p for p in predictions if p.start_frame in by_start]
    worst = max(float(np.abs(p.logits - by_start[p.start_frame]).max()) for p in shared)
    print(f"{args.backbone}: T={args.frames}, {args.width}x{args.height} video of {args.seconds:g} s at {args.fps} fps")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}")
    encoded = f"{reference.frames_encoded} frames encoded by timeline, {recognizer.runner.frames_encoded} by Recognizer"
    print(f"windows: {reference.plan.length} frames every {reference.plan.stride} ({len(reference.results)} windows); "
          f"{encoded}")  # fmt: skip
    print(f"timeline:   {timeline_s:.2f} s (decoding included)")
    print(f"Recognizer: {decode_s + push_s:.2f} s ({decode_s:.2f} s decoding the video + {push_s:.2f} s of pushes; "
          f"{len(shared)} of its windows are timeline's, largest logit difference {worst:.2e})")  # fmt: skip
    print(f"ratio Recognizer / timeline: {(decode_s + push_s) / timeline_s:.2f}")


if __name__ == "__main__":
    main()
