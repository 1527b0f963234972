"""Stage-one benchmark: is extraction as fast as the backbone alone?

Prints, in one run on the same model and the same frames:
  backbone-only frames/s  (pre-decoded, pre-cropped frames in memory, batched forward only)
  end-to-end frames/s     (step_cache.extract: decode workers + batching + forward + HDF5 writes)
  their ratio             (goal >= 0.85: decoding and writing hide behind the backbone)
  bytes per clip          (on disk)

    python bench/extract.py --backbone vit-tiny --videos 24
    python bench/extract.py --backbone dinov2-s --videos 8 --frames 16
    python bench/extract.py --backbone dinov2-b --device cuda --videos 256 --batch-size 512   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from step_cache import extract, open_shards
from step_cache.devices import resolve_device
from step_cache.extraction.backbones import load_backbone
from step_cache.extraction.frame_batches import TokenComputer
from step_cache.extraction.video import decode_clips
from step_cache.synthetic.videos import moving_square, write_video


def make_videos(root: Path, count: int, num_frames: int, size: tuple[int, int]) -> list[Path]:
    paths = []
    for i in range(count):
        frames = moving_square(num_frames, size, direction=1 if i % 2 else -1, seed=i)
        paths.append(write_video(root / ("right" if i % 2 else "left") / f"v{i:04d}.mp4", frames, crf=18))
    return paths


def backbone_only(args: argparse.Namespace, paths: list[Path]) -> tuple[float, int]:
    """Frames/s of the batched forward pass alone, on the very frames extraction will see."""
    backbone = load_backbone(args.backbone, args.weights, args.image_size, args.pool_patches)
    device = resolve_device(args.device)
    compute = TokenComputer(backbone, device, args.dtype)
    frames = np.concatenate(
        [backbone.preprocessing.resize_and_crop(decode_clips(p, args.frames, args.clips).frames) for p in paths]
    )
    batch = args.batch_size or (256 if device.type == "cuda" else 32)
    batches = [frames[i : i + batch] for i in range(0, len(frames), batch)]
    compute(batches[0])  # warm-up (lazy initialisation, cuDNN/oneDNN kernel choice)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    pending = None
    for chunk in batches:
        output, ready = compute(chunk)
        if pending is not None and pending[1] is not None:
            pending[1].synchronize()
        pending = (output, ready)
    if pending is not None and pending[1] is not None:
        pending[1].synchronize()
    return len(frames) / (time.perf_counter() - started), len(frames)


class GpuUtilisation:
    """Samples the GPU's busy percentage (NVML via torch.cuda.utilization) in a thread while a block runs."""

    def __init__(self, device: torch.device, interval: float = 0.2):
        self.device, self.interval, self.samples = device, interval, []
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(torch.cuda.utilization(self.device))
            except Exception:  # noqa: BLE001 - no NVML (pynvml) here: report nothing rather than fail
                return

    def __enter__(self) -> GpuUtilisation:
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def end_to_end(args: argparse.Namespace, videos: Path, out: Path) -> tuple[float, int, float, float | None]:
    device = resolve_device(args.device)
    with GpuUtilisation(device) as utilisation:
        report = extract(
            videos,
            out,
            backbone=args.backbone,
            weights=args.weights,
            frames=args.frames,
            clips=args.clips,
            image_size=args.image_size,
            pool_patches=args.pool_patches,
            dtype=args.dtype,
            device=args.device,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=False,
            overwrite=True,
            compile=args.compile,
        )
    shards = open_shards(out)
    bytes_per_clip = sum(r.bytes for r in shards.manifest.shards) / len(shards)
    return report.frames_per_second, report.frames, bytes_per_clip, utilisation.mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit-tiny")
    parser.add_argument("--weights", default="random")
    parser.add_argument("--videos", type=int, default=24, help="number of generated videos")
    parser.add_argument("--video-frames", type=int, default=120, help="frames per generated video")
    parser.add_argument("--video-size", default="360x480", help="HxW of generated videos")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--clips", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--pool-patches", type=int, default=1)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    height, width = (int(v) for v in args.video_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_videos(root / "videos", args.videos, args.video_frames, (height, width))
        # End to end first, so the backbone-only pass cannot profit from a warmer page cache of the videos.
        e2e_fps, e2e_frames, bytes_per_clip, gpu_busy = end_to_end(args, root / "videos", root / "shards")
        model_fps, model_frames = backbone_only(args, paths)
    assert e2e_frames == model_frames, (e2e_frames, model_frames)
    figures = {
        "backbone": args.backbone,
        "device": str(resolve_device(args.device)),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "frames": model_frames,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "backbone_only_fps": round(model_fps, 2),
        "end_to_end_fps": round(e2e_fps, 2),
        "ratio": round(e2e_fps / model_fps, 3),
        "bytes_per_clip": round(bytes_per_clip),
        "gpu_utilisation_percent": None if gpu_busy is None else round(gpu_busy, 1),
    }
    print(
        f"backbone {args.backbone} on {figures['device']} ({figures['cores']} cores), {model_frames} frames "
        f"of {args.videos} videos {args.video_size}, T={args.frames}"
    )
    print(f"  backbone-only  {model_fps:10.1f} frames/s")
    print(f"  end-to-end     {e2e_fps:10.1f} frames/s")
    print(f"  ratio          {e2e_fps / model_fps:10.3f}   (goal >= 0.85)")
    print(f"  bytes/clip     {bytes_per_clip:10.0f}   ({bytes_per_clip / 2**20:.2f} MiB)")
    if gpu_busy is not None:
        print(f"  GPU busy       {gpu_busy:10.1f} %  (mean during end-to-end)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
