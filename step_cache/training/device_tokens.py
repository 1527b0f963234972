"""``--data device``: the selected clips' tokens held on the compute device, batches gathered there.

On a GPU this removes the host from the training loop: no gather in numpy, no pinned buffer, no host-to-device
copy per batch; an int8 cache stays int8 on the device (half the memory of float16) and is dequantised there per
batch, with the same arithmetic as the host path (``token_data.as_tensor``: an int8 times a float16 scale, one
rounding), so the batches are bit-identical to the in-memory ones. A pass uploads its batch plan once (one small
host tensor per pass); a batch is then a slice of it and two device gathers. On the CPU the same code runs, with
torch's gathers in place of numpy's: that is how the path is tested where no GPU is lent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from step_cache.training.splits import DataError


class HostTokens(Protocol):
    """What ``token_data.InMemoryTokens`` holds (named here: token_data opens this source, so no import back)."""

    tokens: np.ndarray  # (N, [L,] T, P, D) as stored
    scales: np.ndarray | None  # (N, [L,] T, P) float16 for an int8 cache
    row: np.ndarray  # global clip index -> row, -1 where not loaded
    labels: torch.Tensor
    read_dtype: np.dtype

    def merge_layers(self, tokens: torch.Tensor) -> torch.Tensor: ...  # several layers -> concatenated channels


class DeviceTokens:
    """An ``InMemoryTokens``' tokens, scales, row map and labels moved to ``device`` once."""

    mode = "device"

    def __init__(self, memory: HostTokens, device: torch.device) -> None:
        self.device = device
        self.host_row = memory.row  # the membership check runs on the host: on the device it would sync
        self.tokens = torch.from_numpy(memory.tokens).to(device)
        self.scales = None if memory.scales is None else torch.from_numpy(memory.scales).to(device)
        self.row = torch.from_numpy(memory.row).to(device)
        self.labels = memory.labels.to(device)
        self.target = torch.float16 if np.dtype(memory.read_dtype) == np.float16 else torch.float32
        self.merge_layers = memory.merge_layers

    @property
    def nbytes(self) -> int:
        return self.tokens.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def batches(self, plan: Sequence[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        if not len(plan):
            return
        clips = np.concatenate(plan)
        missing = self.host_row[clips] < 0
        if missing.any():
            raise DataError(f"clip {int(clips[missing][0])} was not loaded into memory")
        flat = torch.from_numpy(clips).to(self.device)  # the pass's one host tensor
        rows = self.row[flat]
        start = 0
        for batch in plan:
            stop = start + len(batch)
            picked, clip_ids = rows[start:stop], flat[start:stop]
            tokens = self.tokens[picked]
            if self.scales is not None:  # as token_data.as_tensor does it on the host
                tokens = tokens.to(self.target) * self.scales[picked].to(self.target).unsqueeze(-1)
            yield self.merge_layers(tokens), self.labels[clip_ids], batch
            start = stop

    def close(self) -> None:
        """Nothing to release (the device memory goes with the object)."""


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (None for the CPU, whose budget is RAM)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


__all__ = ["DeviceTokens", "HostTokens", "device_free_bytes"]
