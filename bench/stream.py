"""Timeline and live-recognition speed: real-time factor with frame reuse vs naive per-window extraction, and the
latency from a window's last frame to its prediction.

Builds a small run first (a few generated training videos extracted with the backbone, a STEP probe trained for
one epoch: its accuracy is irrelevant here, only its cost), then on a generated untrimmed video:
  timeline (reuse)   step_cache.recognition.timeline.run_timeline: decode once, encode each sampled frame once
  naive per window   per window: decode its T frames (decode_clips), encode all T, classify (what running
                     extract + predict per window would cost, without the file writes); timed on the first
                     --naive-windows windows and given per window, hence as a real-time factor at the same stride
  live latency       Recognizer.push on the video's frames: the time of the push that completes a window (encode
                     its last frame + the probe), mean ± std over windows, and the real-time factor of the pushes

    python bench/stream.py --backbone vit-tiny --threads 1
    python bench/stream.py --backbone dinov2-s --seconds 6 --naive-windows 3 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from step_cache import extract, train_probe
from step_cache.extraction.video import decode_clips
from step_cache.recognition.model import RunModel
from step_cache.recognition.recognizer import Recognizer
from step_cache.recognition.timeline import run_timeline
from step_cache.synthetic.videos import moving_square, write_video


def build_run(root: Path, args: argparse.Namespace) -> Path:
    frames = round(args.clip_seconds * args.fps)
    for i in range(4):
        clip = moving_square(frames, (args.height, args.width), direction=1 if i % 2 else -1, seed=i)
        write_video(root / "videos" / ("right" if i % 2 else "left") / f"v{i}.mp4", clip, fps=args.fps, crf=18)
    extract(
        root / "videos", root / "shards", backbone=args.backbone, weights="random", frames=args.frames,
        device=args.device, workers=0, progress=False,
    )  # fmt: skip
    train_probe(root / "shards", "step", root / "run", epochs=1, batch_size=2, val_fraction=0.5, progress=False)
    return root / "run"


def long_video(root: Path, args: argparse.Namespace) -> Path:
    """The video both benches recognise: --seconds of a moving square at --fps."""
    total = round(args.seconds * args.fps)
    return write_video(root / "long.mp4", moving_square(total, (args.height, args.width), seed=7), fps=args.fps, crf=18)


class Timed:
    """Seconds spent in the backbone (encode) and the probe (classify) of a RunModel."""

    def __init__(self, model: RunModel):
        self.seconds = {"encode": 0.0, "classify": 0.0}
        for name in self.seconds:
            setattr(model, name, self._timed(name, getattr(model, name)))

    def _timed(self, name, method):
        def call(*args):
            began = time.perf_counter()
            result = method(*args)
            self.seconds[name] += time.perf_counter() - began
            return result

        return call

    def reset(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return seconds


def naive_per_window(model: RunModel, video: Path, windows: list, count: int) -> float:
    """Seconds per window when each window is decoded and encoded on its own."""
    started = time.perf_counter()
    for window in windows[:count]:
        decoded = decode_clips(video, model.frames, model.clips, window.start, window.end)
        tokens = model.encode(decoded.frames)
        model.classify(tokens.reshape(1, model.clips, model.frames, *tokens.shape[1:]))
    return (time.perf_counter() - started) / min(count, len(windows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit-tiny")
    parser.add_argument("--frames", type=int, default=16, help="T of the run")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--clip-seconds", type=float, default=2.0, help="training videos: the default window")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the untrimmed video")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--naive-windows", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (on a busy machine 1 avoids spinning)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = build_run(root, args)
        video, total = long_video(root, args), round(args.seconds * args.fps)
        model = RunModel(run, device=args.device)
        run_timeline(model, video, progress=False)  # warm-up: lazy initialisation, kernel choice
        timer = Timed(model)
        timer.reset()
        reuse = run_timeline(model, video, progress=False)
        split = timer.reset()
        per_window = naive_per_window(model, video, [r.window for r in reuse.results], args.naive_windows)
        naive_split = timer.reset()
        stride_s = reuse.plan.stride / args.fps
        recognizer = Recognizer(run, fps=args.fps, device=args.device)
        frames = decode_clips(video, total).frames
        latencies, started = [], time.perf_counter()
        for frame in frames:
            began = time.perf_counter()
            if recognizer.push(frame) is not None:
                latencies.append(time.perf_counter() - began)
        live = time.perf_counter() - started
    print(f"{args.backbone}: T={args.frames}, {args.width}x{args.height} video of {args.seconds:g} s at {args.fps} fps")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}")
    print(f"windows: {reuse.plan.length} frames every {reuse.plan.stride} ({len(reuse.results)} windows)")
    print(f"timeline (reuse): {reuse.frames_encoded} frames encoded, {reuse.seconds:.2f} s, "
          f"real-time factor {reuse.realtime_factor:.2f}; backbone {split['encode']:.2f} s, probe "
          f"{split['classify']:.2f} s, decoding and the rest {reuse.seconds - sum(split.values()):.2f} s")  # fmt: skip
    print(f"naive per window: {model.frames * model.clips} frames encoded per window, {per_window * 1e3:.0f} ms per "
          f"window, real-time factor {stride_s / per_window:.2f} (over {args.naive_windows} windows; backbone "
          f"{naive_split['encode']:.2f} s, probe {naive_split['classify']:.2f} s)")  # fmt: skip
    print(f"live Recognizer: latency last frame -> prediction {np.mean(latencies) * 1e3:.1f} ± "
          f"{np.std(latencies) * 1e3:.1f} ms over {len(latencies)} windows; real-time factor "
          f"{args.seconds / live:.2f} (frames already decoded)")  # fmt: skip


if __name__ == "__main__":
    main()
