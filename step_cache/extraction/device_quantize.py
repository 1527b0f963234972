"""int8 tokens quantized where the backbone ran, before the copy back to the host (``extract --dtype int8``).

``quantize_tensor`` is ``step_cache.cache.quantize.quantize`` in torch, operation for operation (float32 absmax,
its float16 scale rounded up where rounding to nearest made it smaller, round-half-to-even, clip to ±127), so on
the CPU its values and scales equal the numpy quantizer's bit for bit (tested) and a cache does not depend on where
it was quantized. On a GPU this halves the bytes of the device-to-host copy: D + 2 bytes per token instead of 2 D.

Values and scales travel as one int8 tensor, ``pack``ed (..., D + 2): the D values, then the scale's two bytes; one
copy back and the batcher's per-video scatter as for float tokens; ``unpack`` gives numpy views of both.
"""

from __future__ import annotations

import numpy as np
import torch

from step_cache.cache.quantize import SCALE_DTYPE

_LEVELS = 127  # as cache.quantize: symmetric, -127..127


def quantize_tensor(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., D) float tokens -> int8 values (..., D) and float16 scales (...), on the tokens' device."""
    x = tokens.float()
    absmax = x.abs().amax(dim=-1)  # NaN and Inf propagate: such a token must read back non-finite
    scale = (absmax / _LEVELS).half()
    low = scale.float() * _LEVELS < absmax  # rounded down: the next float16 up (scale >= 0, finite here)
    scale = torch.where(low, (scale.view(torch.int16) + 1).view(torch.float16), scale)
    step = scale.float().unsqueeze(-1)
    usable = torch.isfinite(step) & (step > 0)
    q = torch.where(usable, x / torch.where(usable, step, torch.ones_like(step)), torch.zeros_like(x))
    return q.round().clamp(-_LEVELS, _LEVELS).to(torch.int8), scale


def pack(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 values (..., D) and float16 scales (...) as one int8 tensor (..., D + 2)."""
    return torch.cat([values, scales.unsqueeze(-1).view(torch.int8)], dim=-1)


def unpack(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Views of a ``pack``ed array (..., D + 2): int8 values (..., D) and float16 scales (...)."""
    values = packed[..., :-2]
    scales = np.ascontiguousarray(packed[..., -2:]).view(SCALE_DTYPE)[..., 0]
    return values, scales
