"""What the sections of bench/gpu.py share: timing (CUDA events on a GPU, the wall clock on the CPU), rounding."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from step_cache.devices import resolve_device

GB = 1e9


def sig(value: float, digits: int = 3) -> float:
    """``value`` to ``digits`` significant digits (rates span MB/s to hundreds of GB/s)."""
    return float(f"{value:.{digits}g}")


class Timer:
    """Seconds of the enclosed GPU work (events) or wall clock (CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0

    def __enter__(self) -> Timer:
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.wall


def device_of(args: argparse.Namespace) -> torch.device:
    return resolve_device(args.device)


def backbone_name(args: argparse.Namespace, device: torch.device) -> str:
    return args.backbone or ("dinov2-b" if device.type == "cuda" and not args.small else "vit-tiny")


def best(fn: Callable[[], float], repeat: int = 3) -> float:
    return min(fn() for _ in range(repeat))


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
