"""Streaming: batches read from the HDF5 shards on demand by reader processes, for caches larger than memory.

Each reader (a DataLoader worker) opens its own file handles (``ShardSet`` reopens them after a fork) and reads a
whole batch at a time: it first asks the kernel for every chunk of the batch (``ShardSet.read_stored(advise=
True)``, ``step_cache.cache.read_ahead``), so the disk serves them together, then reads each clip (or stretch of
consecutive clips) straight into the batch's buffer. In a reader process that buffer is shared memory (an int8
cache is dequantized into it), which the training process maps as it is: the batch crosses the process boundary
without a copy. Both steps were measured
where a streamed epoch lost its time (docs/performance.md, "Why streaming read below the sequential rate").

The readers persist across passes (epochs, evaluations), so processes are started and files opened once per
source, not once per pass. How many: ``reader_count`` (the rule is in its docstring and docs/training.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from step_cache.cache.shards import ShardSet
from step_cache.cpu_budget import worker_count
from step_cache.training.token_data import Batch, TokenSelection, as_tensor, available_memory

PREFETCH = 4  # batches each reader has read ahead (DataLoader's prefetch_factor)
IN_FLIGHT_SHARE = 0.25  # of the available memory, at most, held by the batches the readers have read ahead


def reader_count(device: torch.device | None = None, batch_bytes: int = 0) -> int:
    """Streaming reader processes for this process's CPU budget (affinity, CPU quota, ``--threads``; not the host's
    core count), bounded by memory:

    - on CUDA, all but two CPUs of the budget (the training and prefetch threads);
    - on the CPU, half the budget and at least 2: a reader spends most of an advised read waiting for the disk,
      so it takes little of the probe's cores, and two keep one batch being read while the other's is handed over;
    - at most as many as keep ``PREFETCH`` batches of ``batch_bytes`` each per reader within ``IN_FLIGHT_SHARE`` of
      the available memory (0: unknown, no bound), at least 1.
    """
    if device is not None and device.type == "cuda":
        wanted = worker_count(1 << 10, spare=2)
    else:
        wanted = max(2, worker_count(1 << 10, spare=0) // 2)
    if batch_bytes > 0:
        wanted = min(wanted, int(IN_FLIGHT_SHARE * available_memory() // (PREFETCH * batch_bytes)))
    return max(1, wanted)


def eval_batch_size(configured: int | None, batch_size: int, mode: str) -> int:
    """An evaluation pass's batch: ``configured`` when set; else 4 x the training batch (no backward pass: fewer,
    larger steps), but the training batch itself when the tokens are streamed. There every reader holds
    ``PREFETCH`` batches read ahead, sized by ``reader_count`` for the training batch: 4x larger ones held 4x the
    memory (a 256-clip batch of DINOv2-S tokens, 16 frames, is 0.8 GB; 8 in flight, 6.4 GB, and a float32 copy in
    the training process), for no speed, as reading is the cost (docs/performance.md, bench/scale.py)."""
    if configured:
        return configured
    return batch_size if mode == "streaming" else 4 * batch_size


def _shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor in shared memory, as torch's own collate makes one in a worker: sending it to the
    training process passes its handle instead of copying it into shared memory first."""
    base = torch.empty(0, dtype=dtype)
    return base.new(base._typed_storage()._new_shared(math.prod(shape))).view(shape)


class _BatchReader(torch.utils.data.Dataset):
    """Item ``batch`` (an array of clip indices) is that batch, read in one go."""

    def __init__(self, shards: ShardSet, selection: TokenSelection, labels: torch.Tensor):
        self.shards, self.selection, self.labels = shards, selection, labels
        frames, tokens, dim = shards.clip_shape
        self.read_shape = (frames, selection.stop if selection.part == "cls" else tokens, dim)
        # The batch is what is read (whole clips or the CLS copy, no layer axis): it can go to shared memory as it
        # is read (a float cache) or dequantized (int8), with no copy on the way to the training process.
        self.direct = selection.layers is None and shards.layout.layers is None
        self.direct = self.direct and (selection.start, selection.stop) == (0, self.read_shape[1])
        self.read_dtype = torch.from_numpy(np.empty(0, shards.layout.read_dtype)).dtype

    def __getitem__(self, batch: np.ndarray) -> Batch:
        read, quantized = self.shards.read_stored, self.shards.layout.quantized
        shared = self.direct and torch.utils.data.get_worker_info() is not None  # in a reader process
        if shared and not quantized:
            tokens = _shared_empty((len(batch), *self.read_shape), self.read_dtype)
            read(batch, part=self.selection.part, out=tokens.numpy(), advise=True)
            return tokens, self.labels[batch], batch
        values, scales = read(batch, layers=self.selection.layers, part=self.selection.part, advise=True)
        values = np.ascontiguousarray(self.selection.apply(values))
        if scales is not None:
            scales = np.ascontiguousarray(self.selection.apply(scales[..., None])[..., 0])
        out = _shared_empty(values.shape, self.read_dtype) if shared else None
        tokens = self.selection.merge_layers(as_tensor(values, scales, self.shards.layout.read_dtype, out=out))
        return tokens, self.labels[batch], batch


class _PlanSampler:
    """The DataLoader's sampler: it yields the batches (clip-index arrays) of the current pass. A persistent
    loader creates its sampler iterator anew for every pass, so setting ``plan`` between passes is all it takes."""

    def __init__(self, plan: Sequence[np.ndarray] = ()) -> None:
        self.plan = list(plan)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


class StreamingTokens:
    """Batches read from HDF5 on demand, by ``workers`` processes (0 = in the calling process; None =
    ``reader_count`` for ``device`` and the first pass's largest batch).

    The worker processes start with the first pass and stay up for the next ones (``persistent_workers``), with
    their HDF5 files open, until ``close()`` or until the source is dropped. Passes are read one at a time; a pass
    started while another is still being read gets a loader (and workers) of its own."""

    mode = "streaming"

    def __init__(
        self,
        shards: ShardSet,
        selection: TokenSelection,
        labels: np.ndarray,
        workers: int | None = None,
        pin_memory: bool = False,
        device: torch.device | None = None,
    ):
        self.shards, self.selection, self.workers, self.pin_memory = shards, selection, workers, pin_memory
        self.device = device
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self._plan = _PlanSampler()
        self._loader: torch.utils.data.DataLoader | None = None
        self._reading = False

    def _readers(self, plan: Sequence[np.ndarray]) -> int:
        if self.workers is None:
            clip = self.selection.clip_bytes(self.shards.layout, self.shards.manifest.frames)
            self.workers = reader_count(self.device, clip * max((len(b) for b in plan), default=0))
        return self.workers

    def _make_loader(self, sampler: _PlanSampler, persistent: bool) -> torch.utils.data.DataLoader:
        self.shards.close()  # never fork open HDF5 handles into workers
        workers = self._readers(sampler.plan)
        return torch.utils.data.DataLoader(
            _BatchReader(self.shards, self.selection, self.labels),
            batch_size=None,  # items already are batches
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.pin_memory,
            prefetch_factor=PREFETCH if workers else None,
            persistent_workers=persistent and workers > 0,
            # A private generator: the loader draws a worker seed per iterator, which would otherwise advance the
            # global torch RNG (dropout) and make streaming runs differ from in-memory ones.
            generator=torch.Generator().manual_seed(0),
        )

    def batches(self, plan: Sequence[np.ndarray]) -> Iterator[Batch]:
        if self._reading:  # the persistent loader is busy with an unfinished pass: never disturb it
            yield from self._read(self._make_loader(_PlanSampler(plan), persistent=False))
            return
        self._plan.plan = list(plan)
        if self._loader is None:
            self._loader = self._make_loader(self._plan, persistent=True)
        self._reading = True
        try:
            yield from self._read(self._loader)
        finally:
            self._reading = False

    @staticmethod
    def _read(loader: torch.utils.data.DataLoader) -> Iterator[Batch]:
        for tokens, labels, batch in loader:
            yield tokens, labels, np.asarray(batch)

    def close(self) -> None:
        """Stop the worker processes (dropping the loader shuts them down); a later pass starts new ones."""
        self._loader = None


__all__ = ["PREFETCH", "StreamingTokens", "eval_batch_size", "reader_count"]
