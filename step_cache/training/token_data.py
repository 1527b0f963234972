"""Batches of cached tokens for training and evaluation: token subsets, batch plans, and two data paths.

- ``InMemoryTokens`` reads the selected clips once, shard by shard, and keeps them in the stored dtype (float16;
  int8 with per-token scales) in RAM; a batch is a fancy-indexed copy (int8: dequantized to float16). The probe
  casts per batch.
- ``DeviceTokens`` (``device_tokens.py``) holds them on the compute device and gathers batches there.
- ``StreamingTokens`` (``streaming.py``) reads each batch from HDF5 in reader processes that persist across
  passes.

Both follow the same ``batch_plan`` (a list of clip-index arrays, shuffled by (seed, epoch)), so they yield
identical batches and identical training runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from step_cache.cache.manifest import TokenLayout
from step_cache.cache.quantize import SCALE_DTYPE, token_bytes
from step_cache.cache.shards import ShardSet
from step_cache.interface import option
from step_cache.training.layer_choice import along_tokens, is_mix, layer_positions, merge_layers
from step_cache.training.splits import DataError

log = logging.getLogger(__name__)

TOKEN_SUBSETS = ("all", "cls", "patches")
DATA_MODES = ("auto", "memory", "streaming", "device")

# tokens (B, T, P, D) (L x D wide with concatenated layers) float16 (float32 for a float32 cache; int8 caches
# dequantized), labels (B,), clip indices
Batch = tuple[torch.Tensor, torch.Tensor, np.ndarray]


@dataclass(frozen=True)
class TokenSelection:
    """Which of a frame's P tokens a probe sees, and where the CLS token sits among them."""

    subset: str
    start: int
    stop: int
    cls_index: int | None
    cls_tokens: int = 0  # how many of the selected tokens are CLS tokens (they lead the frame); only training reads it
    layers: tuple[int, ...] | None = None  # positions of the stored layers read (layer_choice); None: no layer axis
    mix: bool = False  # the layers go to a learned mix (probes.layer_inputs) in front of the probe
    along_tokens: bool = False  # the layers' tokens one after the other (V-JEPA 2's out_layers), not side by side
    part: str = "all"  # read_stored's part: "cls" reads only the CLS bytes (the shards' CLS copy, else a slice)

    @property
    def tokens_per_frame(self) -> int:
        return self.stop - self.start

    @property
    def channels(self) -> int:
        """How many stored layers are read (1 without a layer axis)."""
        return 1 if self.layers is None else len(self.layers)

    def clip_bytes(self, layout: TokenLayout, frames: int) -> int:
        """Bytes one clip of this selection takes as stored (int8: values and their scales)."""
        return self.channels * frames * self.tokens_per_frame * token_bytes(layout.dtype, layout.dim)

    def probe_dim(self, dim: int) -> int:
        """The width of the tokens the probe itself sees: L x D for ``concat:``, else D."""
        return dim if self.mix or self.along_tokens else dim * self.channels

    @property
    def probe_tokens_per_frame(self) -> int:
        """Tokens per frame the probe sees: L x P' with ``tokens:``, else P'."""
        return self.tokens_per_frame * (self.channels if self.along_tokens else 1)

    def apply(self, tokens: np.ndarray) -> np.ndarray:
        """(n, [L,] T, P, D) -> (n, [L,] T, P', D); a view when the subset is everything."""
        return tokens if (self.start, self.stop) == (0, tokens.shape[-2]) else tokens[..., self.start : self.stop, :]

    def merge_layers(self, tokens: torch.Tensor) -> torch.Tensor:
        """A batch as read, (B, L, T, P', D) for a cache with a layer axis, -> what the probe sees, (B, T, P', L D)."""
        return tokens if self.layers is None else merge_layers(tokens, self.along_tokens)


def select_tokens(
    layout: TokenLayout, subset: str = "all", layers: str = "last", depth: int | None = None
) -> TokenSelection:
    """``all``: CLS + patches, ``cls``: the per-frame CLS token(s) only, ``patches``: the patch grid only; of the
    stored ``layers`` (``layer_choice``; ``depth``: the backbone's, so a cache's own block index is accepted)."""
    total, cls = layout.tokens_per_frame, layout.cls_tokens
    positions, mix, along = layer_positions(layers, layout, depth), is_mix(layers), along_tokens(layers)
    if subset == "all":
        return TokenSelection(subset, 0, total, 0 if cls else None, cls, positions, mix, along)
    if subset == "cls":
        if cls == 0:
            raise DataError(
                f"{option('tokens', 'cls')}: this cache stores no CLS token (extracted without one); use patches"
            )
        return TokenSelection(subset, 0, cls, 0, cls, positions, mix, along, part="cls")
    if subset == "patches":
        if total == cls:
            raise DataError(f"{option('tokens', 'patches')}: this cache stores no patch tokens; use cls")
        return TokenSelection(subset, cls, total, None, layers=positions, mix=mix, along_tokens=along)
    raise DataError(f"unknown token subset {subset!r}; choose one of: {', '.join(TOKEN_SUBSETS)}")


def batch_plan(
    indices: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0
) -> list[np.ndarray]:
    """Clip indices cut into batches; shuffled with a generator keyed by (seed, epoch), so an epoch's batches do
    not depend on what ran before it (which is what makes ``--resume`` exact)."""
    indices = np.asarray(indices, dtype=np.int64)
    if shuffle:
        indices = indices[np.random.default_rng([seed, epoch]).permutation(len(indices))]
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def as_tensor(
    values: np.ndarray, scales: np.ndarray | None, dtype: np.dtype, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Stored tokens as a tensor in the read dtype: int8 values times their per-token scales (the same values as
    ``step_cache.cache.quantize.dequantize``: an int8 times a float16 is exact before the one rounding), done in
    torch, which measured 3-5x faster than numpy's float16 conversion on one core. ``out``: where to put the
    dequantized tokens (a streaming reader's shared memory); unused for a float cache (no new tensor is made)."""
    tokens = torch.from_numpy(values)
    if scales is None:
        return tokens
    target = torch.float16 if np.dtype(dtype) == np.float16 else torch.float32
    return torch.mul(tokens.to(target), torch.from_numpy(scales).to(target).unsqueeze(-1), out=out)


class TokenSource(Protocol):
    mode: str

    def batches(self, plan: Sequence[np.ndarray]) -> Iterator[Batch]: ...

    def close(self) -> None: ...


class InMemoryTokens:
    """The selected clips' tokens held in RAM in the stored dtype."""

    mode = "memory"

    def __init__(
        self,
        shards: ShardSet,
        indices: np.ndarray,
        selection: TokenSelection,
        labels: np.ndarray,
        progress: bool = False,
    ):
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.row = np.full(len(shards), -1, dtype=np.int64)  # global clip index -> row in self.tokens
        self.row[indices] = np.arange(len(indices))
        frames, _, dim = shards.clip_shape
        layer_axis = () if selection.layers is None else (len(selection.layers),)
        shape = (len(indices), *layer_axis, frames, selection.tokens_per_frame, dim)
        # As stored: an int8 cache stays int8 in RAM (half of float16) with its scales, dequantized per batch.
        self.tokens = np.empty(shape, dtype=np.dtype(shards.layout.dtype))
        self.scales = np.empty(shape[:-1], dtype=SCALE_DTYPE) if shards.layout.quantized else None
        self.merge_layers = selection.merge_layers  # (B, L, ...) batches -> the probe's concatenated channels
        self.read_dtype = shards.layout.read_dtype
        bar = tqdm(total=len(indices), desc="loading tokens", unit="clip", disable=not progress, leave=False)
        for shard in range(len(shards.paths)):
            start, stop = shards.offsets[shard], shards.offsets[shard + 1]
            wanted = indices[(indices >= start) & (indices < stop)]
            if len(wanted) == 0:
                continue
            if len(wanted) * 2 >= stop - start:  # most of the shard: one contiguous read beats a gather
                values, scales = shards.read_shard_stored(shard, layers=selection.layers, part=selection.part)
                values, scales = values[wanted - start], None if scales is None else scales[wanted - start]
            else:
                values, scales = shards.read_stored(wanted, layers=selection.layers, part=selection.part)
            self.tokens[self.row[wanted]] = selection.apply(values)
            if self.scales is not None:
                self.scales[self.row[wanted]] = selection.apply(scales[..., None])[..., 0]
            bar.update(len(wanted))
        bar.close()
        shards.close()  # later forks (streaming evaluation elsewhere) must not inherit these handles

    @property
    def nbytes(self) -> int:
        return int(self.tokens.nbytes + (0 if self.scales is None else self.scales.nbytes))

    def batches(self, plan: Sequence[np.ndarray]) -> Iterator[Batch]:
        for batch in plan:
            rows = self.row[batch]
            if (rows < 0).any():
                raise DataError(f"clip {int(batch[rows < 0][0])} was not loaded into memory")
            scales = None if self.scales is None else self.scales[rows]
            yield self.merge_layers(as_tensor(self.tokens[rows], scales, self.read_dtype)), self.labels[batch], batch

    def close(self) -> None:
        """Nothing to release (the tokens go with the object)."""


def available_memory() -> int:
    """Bytes of RAM available to new allocations (MemAvailable), or total RAM where that is unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_mode(mode: str, nbytes: int, memory_fraction: float = 0.5, device_bytes: int | None = None) -> str:
    """``memory``, ``streaming`` or ``device``: ``auto`` loads into RAM when the tokens need less than
    ``memory_fraction`` of the available memory, and onto a GPU (``device_bytes`` free) when they also fit in that
    share of its free memory."""
    if mode not in DATA_MODES:
        raise DataError(f"unknown data mode {mode!r}; choose one of: {', '.join(DATA_MODES)}")
    if mode != "auto":
        return mode
    budget = memory_fraction * available_memory()
    chosen = "memory" if nbytes <= budget else "streaming"
    if chosen == "memory" and device_bytes is not None and nbytes <= memory_fraction * device_bytes:
        chosen = "device"
    log.debug("tokens need %.2f GiB, in-memory budget %.2f GiB: %s", nbytes / 2**30, budget / 2**30, chosen)
    return chosen
