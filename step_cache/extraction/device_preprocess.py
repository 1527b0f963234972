"""Resize and crop on the compute device (torch), for frames a GPU decoder left there: no host round trip.

The same sizes and crop arithmetic as ``Preprocessing.resize_and_crop`` (timm's eval transform), with torch's
antialiased interpolation instead of PIL's: the two agree to one level of 8-bit rounding (tests/test_device_decode.py
measures it on the CPU), which is why a cache decoded this way records its own decoder and is never mixed with a
cache preprocessed by PIL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from step_cache.errors import StepCacheError
from step_cache.extraction.preprocess import Preprocessing
from step_cache.interface import option

# timm's interpolation names -> torch's antialiased ones, which follow PIL's filters. Nearest is left out: torch's
# "nearest-exact" breaks ties between two source pixels unlike PIL (3 levels apart on smooth frames).
TORCH_MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}


class DevicePreprocessingError(StepCacheError, ValueError):
    """A preprocessing torch cannot reproduce on the device (PIL's nearest, box, hamming and lanczos filters)."""


def check_device_preprocessing(preprocessing: Preprocessing) -> None:
    if preprocessing.interpolation not in TORCH_MODES:
        raise DevicePreprocessingError(
            f"the backbone's preprocessing resizes with {preprocessing.interpolation!r}, which the GPU decode path "
            f"cannot reproduce (it has {', '.join(TORCH_MODES)}): choose a CPU decoder ({option('decoder', 'decord')})"
        )


def resize_and_crop_tensor(preprocessing: Preprocessing, frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 on any device -> (N, 3, crop_h, crop_w) uint8 on that device."""
    check_device_preprocessing(preprocessing)
    crop_h, crop_w = preprocessing.crop_size
    height, width = preprocessing.resized_size(frames.shape[-2], frames.shape[-1])
    if (height, width) != tuple(frames.shape[-2:]):
        mode = TORCH_MODES[preprocessing.interpolation]
        resized = F.interpolate(frames.float(), size=(height, width), mode=mode, antialias=True)
        frames = resized.round_().clamp_(0, 255).to(torch.uint8)
    if crop_h > height or crop_w > width:  # pad a side smaller than the crop (the odd pixel right/bottom)
        top, left = max(0, crop_h - height) // 2, max(0, crop_w - width) // 2
        fill = torch.tensor(preprocessing.fill, dtype=torch.uint8, device=frames.device).view(1, 3, 1, 1)
        padded = fill.expand(len(frames), 3, max(height, crop_h), max(width, crop_w)).clone()
        padded[:, :, top : top + height, left : left + width] = frames
        frames, (height, width) = padded, padded.shape[-2:]
    top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)
    return frames[:, :, top : top + crop_h, left : left + crop_w].contiguous()
