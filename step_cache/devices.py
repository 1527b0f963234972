"""Choosing the compute device, the same way for extraction, training and sweeps."""

from __future__ import annotations

import torch

from step_cache.errors import InputError


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu`` or ``cuda[:N]``; a clear error for anything else.

    A CUDA device also becomes the current one, so that streams, events and pinned-memory copies made without an
    explicit device (``torch.cuda.Event().record()``) belong to it and not to GPU 0.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but torch sees no CUDA GPU")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(resolved)
    return resolved
