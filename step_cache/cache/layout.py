"""How one clip's tokens are laid out (``extraction.tokens`` of the manifest; docs/shard-format.md).

P tokens per frame: ``cls_tokens`` CLS tokens first, then the patch grid row-major. A cache of several backbone
blocks (``extract --layers``, format version 5) records their 0-based block indices in ``layers`` and stores a
layer axis before the frames; a cache without ``layers`` holds the last block's output (``forward_features``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from step_cache.cache.quantize import is_quantized, read_dtype, token_bytes

LAYERS_FORMAT_VERSION = 5  # a cache with a layer axis (``extraction.tokens.layers``) is written as version 5


@dataclass(frozen=True)
class TokenLayout:
    """How the P tokens of one frame are laid out: ``cls_tokens`` CLS tokens first, then the patch grid row-major;
    ``layers``: the backbone blocks stored (0-based, ascending), None for the last block only (no layer axis)."""

    cls_tokens: int
    grid: tuple[int, int]
    dim: int
    dtype: str = "float16"
    registers_dropped: int = 0
    patch_pool: int = 1
    layers: tuple[int, ...] | None = None

    @property
    def tokens_per_frame(self) -> int:
        return self.cls_tokens + self.grid[0] * self.grid[1]

    @property
    def layer_count(self) -> int:
        """Layers stored per clip (1 without a layer axis)."""
        return 1 if self.layers is None else len(self.layers)

    @property
    def quantized(self) -> bool:
        """int8 values with a float16 scale per token (``step_cache.cache.quantize``)."""
        return is_quantized(self.dtype)

    @property
    def read_dtype(self) -> np.dtype:
        """The dtype readers return tokens in (int8 tokens are dequantized to float16)."""
        return read_dtype(self.dtype)

    def clip_bytes(self, frames: int) -> int:
        """Bytes one clip of ``frames`` frames takes on disk and in memory, all its layers (int8: values and
        scales); a shard's CLS copy (``cls_bytes``) comes on top."""
        return self.layer_count * frames * self.tokens_per_frame * token_bytes(self.dtype, self.dim)

    def cls_bytes(self, frames: int) -> int:
        """Bytes of one clip's CLS copy (dataset ``cls``, written when ``storage.cls_copy``)."""
        return self.layer_count * frames * self.cls_tokens * token_bytes(self.dtype, self.dim)

    @property
    def format_version(self) -> int:
        """The oldest shard format for these tokens: 1 for floats (older step-cache reads it), 2 for int8, 5 with a
        layer axis."""
        return LAYERS_FORMAT_VERSION if self.layers is not None else 2 if self.quantized else 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenLayout:
        layers = data.get("layers")
        return cls(
            cls_tokens=int(data["cls_tokens"]),
            grid=(int(data["grid"][0]), int(data["grid"][1])),
            dim=int(data["dim"]),
            dtype=str(data.get("dtype", "float16")),
            registers_dropped=int(data.get("registers_dropped", 0)),
            patch_pool=int(data.get("patch_pool", 1)),
            layers=None if layers is None else tuple(int(layer) for layer in layers),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid"] = list(self.grid)
        data["tokens_per_frame"] = self.tokens_per_frame
        if self.layers is None:  # the last block only: the settings (and their hash) every older cache has
            del data["layers"]
        else:
            data["layers"] = list(self.layers)
        if self.quantized:
            data["scale_dtype"] = "float16"  # one absmax scale per token, dataset token_scales
        return data
