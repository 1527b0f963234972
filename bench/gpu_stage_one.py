"""bench/gpu.py's stage-one sections: the backbone ceiling and the TokenComputer loop, copies, each host limit
alone, and end-to-end extract."""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from extract import GpuUtilisation  # bench/extract.py
from gpu_common import GB, Timer, backbone_name, best, device_of, sig, timed


def backbone(args: argparse.Namespace) -> dict[str, Any]:
    from step_cache.extraction.backbones import load_backbone
    from step_cache.extraction.frame_batches import FrameBatcher, PendingVideo, TokenComputer

    device = device_of(args)
    size = 32 if args.small else 224
    batch = 4 if args.small else 256
    batches = 2 if args.small else 20
    model = load_backbone(backbone_name(args, device), "random", size)
    computer = TokenComputer(model, device, "float16")
    frames = np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
    on_device = torch.from_numpy(frames).to(device)
    computer(on_device)  # warm-up
    with Timer(device) as ceiling:
        for _ in range(batches):
            computer(on_device)
    ceiling_fps = batch * batches / ceiling.seconds
    flops = _forward_flops(model, computer, on_device[:1])
    peak = args.peak_tflops
    batcher = FrameBatcher(batch, computer)
    with Timer(device) as loop:
        for i in range(batches):
            batcher.add(PendingVideo(payload=i, frames=frames))
        batcher.flush()
    loop_fps = batch * batches / loop.seconds
    return {
        "backbone": backbone_name(args, device),
        "frames": batch * batches,
        "ceiling_frames_per_s": round(ceiling_fps, 1),
        "gflops_per_frame": sig(flops / 1e9),
        "mfu": round(ceiling_fps * flops / (peak * 1e12), 3) if peak else None,
        "token_computer_frames_per_s": round(loop_fps, 1),
        "token_computer_over_ceiling": round(loop_fps / ceiling_fps, 3),
        "goal": ">= 0.95",
    }


def _forward_flops(model: Any, computer: Any, frame: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.forward_tokens(model.preprocessing.normalise(frame))
    return float(counter.get_total_flops())


def copies(args: argparse.Namespace) -> dict[str, Any]:
    device = device_of(args)
    nbytes = (8 if args.small else 512) * 2**20
    host = torch.empty(nbytes, dtype=torch.uint8)
    figures: dict[str, Any] = {"bytes": nbytes}
    if device.type != "cuda":
        figures["host_copy_gb_s"] = sig(nbytes / best(lambda: timed(lambda: host.clone())) / GB)
        figures["h2d_pinned_gb_s"] = figures["d2h_pinned_gb_s"] = None
        figures["note"] = "no CUDA: host memcpy only"
        return figures
    pinned = host.pin_memory()
    target = torch.empty(nbytes, dtype=torch.uint8, device=device)

    def copy(dst: torch.Tensor, src: torch.Tensor) -> float:
        with Timer(device) as timer:
            dst.copy_(src, non_blocking=True)
        return timer.seconds

    figures["h2d_pageable_gb_s"] = sig(nbytes / best(lambda: copy(target, host)) / GB)
    figures["h2d_pinned_gb_s"] = sig(nbytes / best(lambda: copy(target, pinned)) / GB)
    figures["d2h_pinned_gb_s"] = sig(nbytes / best(lambda: copy(pinned, target)) / GB)
    return figures


def _pipe_child(conn: Any, count: int) -> None:
    conn.send("ready")
    for _ in range(count):
        conn.recv()
    conn.send("done")


def host(args: argparse.Namespace) -> dict[str, Any]:
    from step_cache.cache.manifest import TokenLayout
    from step_cache.cache.quantize import quantize
    from step_cache.cache.shard_file import ClipRecord, ShardWriter
    from step_cache.extraction.device_quantize import pack, quantize_tensor

    device = device_of(args)
    frames, grid, dim = (4, 4, 64) if args.small else (16, 16, 768)
    clips = 8 if args.small else 64
    tokens = np.random.default_rng(0).standard_normal((frames, 1 + grid * grid, dim)).astype(np.float16)
    figures: dict[str, Any] = {}
    figures["int8_quantise_gb_s"] = sig(tokens.nbytes / best(lambda: timed(lambda: quantize(tokens))) / GB)
    on_device = torch.from_numpy(tokens).to(device)

    def quantise_on_device() -> None:  # what extract --dtype int8 does before the copy back (device_quantize)
        pack(*quantize_tensor(on_device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    figures["int8_quantise_device_gb_s"] = sig(tokens.nbytes / best(lambda: timed(quantise_on_device)) / GB)
    with tempfile.TemporaryDirectory() as tmp:
        layout = TokenLayout(cls_tokens=1, grid=(grid, grid), dim=dim)
        writer = ShardWriter(tmp, "shard-00000.h5", layout, frames)
        record = ClipRecord(tokens, 0, "v.mp4", 0, "train", np.arange(frames), frames, False)
        write_s = timed(lambda: [writer.append(record) for _ in range(clips)])
        finish_s = timed(writer.finish)
        path = Path(tmp) / "shard-00000.h5"
        hash_s = timed(lambda: hashlib.sha256(path.read_bytes()).hexdigest())
        size = path.stat().st_size
    figures["shard_write_gb_s"] = sig(size / write_s / GB)
    figures["shard_finish_fsync_hash_gb_s"] = sig(size / finish_s / GB)
    figures["sha256_gb_s"] = sig(size / hash_s / GB)
    side = 224
    decoded = np.zeros((16 if args.small else 64, 3, side, side), dtype=np.uint8)
    parent, child = mp.Pipe()
    process = mp.get_context("spawn").Process(target=_pipe_child, args=(child, 4))
    process.start()
    parent.recv()  # started: time the messages only
    pipe_s = timed(lambda: ([parent.send(decoded) for _ in range(4)], parent.recv()))
    process.join()
    figures["pipe_pickle_gb_s"] = sig(4 * decoded.nbytes / pipe_s / GB)
    figures["concatenate_gb_s"] = sig(2 * decoded.nbytes / timed(lambda: np.concatenate([decoded, decoded])) / GB)
    if device.type == "cuda":
        as_tensor = torch.from_numpy(decoded)
        figures["pin_gb_s"] = sig(decoded.nbytes / best(lambda: timed(as_tensor.pin_memory)) / GB)
    figures.update(_decode_pool(args))
    figures["torchcodec_cuda_frames_per_s"] = None
    if device.type == "cuda":
        figures["torchcodec_cuda_frames_per_s"] = _decode_rate(args, "torchcodec-cuda", (480, 854), device)
    return figures


def make_videos(root: Path, count: int, size: tuple[int, int], num_frames: int) -> list[Path]:
    from step_cache.synthetic.videos import moving_square, write_video

    return [
        write_video(root / f"v{i}.mp4", moving_square(num_frames, size, direction=1, seed=i), crf=23)
        for i in range(count)
    ]


def _decode_pool(args: argparse.Namespace) -> dict[str, Any]:
    sizes = {"480p": (48, 64)} if args.small else {"480p": (480, 854), "1080p": (1080, 1920)}
    return {
        f"decode_pool_{name}_frames_per_s": _decode_rate(args, "decord", size, torch.device("cpu"))
        for name, size in sizes.items()
    }


def _decode_rate(args: argparse.Namespace, decoder: str, size: tuple[int, int], device: torch.device) -> float:
    from step_cache.cpu_budget import worker_count
    from step_cache.extraction.decode_pool import DecodeTask
    from step_cache.extraction.device_decode import open_decode_pool
    from step_cache.extraction.preprocess import Preprocessing

    count, frames = (1, 4) if args.small else (max(8, os.cpu_count() or 1), 16)
    preprocessing = Preprocessing(224, 256, "bicubic", (0.5,) * 3, (0.5,) * 3)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_videos(Path(tmp), count, size, 16 if args.small else 120)
        pool = open_decode_pool(decoder, device, worker_count(64, spare=0), frames, 1, 600.0)
        try:
            tasks = [DecodeTask(i, str(p), None, None) for i, p in enumerate(paths)]
            started = time.perf_counter()
            decoded = sum(len(r.frames) for r in pool.run(tasks, preprocessing) if r.error is None)
            return round(decoded / (time.perf_counter() - started), 1)
        finally:
            pool.close()


def extract(args: argparse.Namespace) -> dict[str, Any]:
    from step_cache import extract as run_extract

    device = device_of(args)
    name = backbone_name(args, device)
    size, count = ((48, 64), 2) if args.small else ((480, 854), 256)
    decoders = ["decord"] + (["torchcodec-cuda"] if device.type == "cuda" else [])
    ceiling = backbone(args)["ceiling_frames_per_s"]
    figures: dict[str, Any] = {"backbone": name, "ceiling_frames_per_s": ceiling}
    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "videos"
        for label in ("a", "b"):
            make_videos(videos / label, count // 2, size, 16 if args.small else 120)
        for decoder in decoders:
            with GpuUtilisation(device) as busy:
                report = run_extract(
                    videos, Path(tmp) / decoder, backbone=name, weights="random", frames=4 if args.small else 16,
                    image_size=32 if args.small else 224, device=args.device, decoder=decoder, progress=False,
                )  # fmt: skip
            ratio = report.frames_per_second / ceiling
            figures[decoder] = {
                "frames_per_s": round(report.frames_per_second, 1),
                "over_ceiling": round(ratio, 3),
                "gpu_utilisation_percent": None if busy.mean is None else round(busy.mean, 1),
                "binding_limit": "backbone" if ratio >= 0.85 else "host (decode, copies or writes: see host)",
            }
    figures["goal"] = ">= 0.85"
    return figures
