"""Opening the token source a run reads from: in RAM, on the device or streamed (``--data``, ``choose_mode``)."""

from __future__ import annotations

import numpy as np
import torch

from step_cache.cache.shards import ShardSet
from step_cache.training.device_tokens import DeviceTokens, device_free_bytes
from step_cache.training.streaming import StreamingTokens
from step_cache.training.token_data import InMemoryTokens, TokenSelection, TokenSource, choose_mode


def open_token_source(
    shards: ShardSet,
    indices: np.ndarray,
    selection: TokenSelection,
    labels: np.ndarray,
    *,
    mode: str = "auto",
    memory_fraction: float = 0.5,
    workers: int | None = None,
    pin_memory: bool = False,
    progress: bool = False,
    device: torch.device | None = None,
) -> TokenSource:
    """A token source over ``indices`` (the clips the caller will ask for), in the chosen data mode (``device``:
    on ``device``, the CPU when None)."""
    nbytes = len(np.unique(indices)) * selection.clip_bytes(shards.layout, shards.manifest.frames)
    device = device or torch.device("cpu")
    chosen = choose_mode(mode, nbytes, memory_fraction, device_free_bytes(device))
    if chosen in ("memory", "device"):
        memory = InMemoryTokens(shards, indices, selection, labels, progress=progress)
        return DeviceTokens(memory, device) if chosen == "device" else memory
    return StreamingTokens(shards, selection, labels, workers=workers, pin_memory=pin_memory, device=device)


__all__ = ["open_token_source"]
