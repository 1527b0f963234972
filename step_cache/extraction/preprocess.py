"""Frame preprocessing exactly as a timm backbone's eval transform does it.

Resize the shorter side to ``floor(crop / crop_pct)``, centre-crop ``crop`` x ``crop``, scale to [0, 1] and
normalise with the backbone's own mean/std. Resizing and cropping run in the decode workers on uint8 frames
(small to ship between processes, and PIL keeps torch out of the workers); normalisation runs on the compute
device, batched, right before the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

_PIL_MODES = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # PIL.Image.Resampling values


@dataclass(frozen=True)
class Preprocessing:
    crop: int  # square output size fed to the backbone
    resize_shorter: int  # the shorter side is resized to this before the centre crop
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_timm_config(cls, config: dict[str, Any], crop: int | None = None) -> Preprocessing:
        """Build from ``timm.data.resolve_model_data_config(model)``; ``crop`` overrides its input size."""
        size = crop or int(config["input_size"][-1])
        crop_pct = float(config.get("crop_pct") or 1.0)
        interpolation = config.get("interpolation", "bicubic")
        if interpolation not in _PIL_MODES:
            interpolation = "bicubic"
        return cls(
            crop=size,
            resize_shorter=math.floor(size / crop_pct),
            interpolation=interpolation,
            mean=tuple(float(m) for m in config["mean"]),
            std=tuple(float(s) for s in config["std"]),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    def resize_and_crop(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 3, crop, crop) uint8, frame by frame with PIL as timm's eval transform does.

        Same calls as torchvision's Resize(int) + CenterCrop on PIL images, so the pixels equal timm's own
        transform bit for bit; it also keeps torch out of the decode workers.
        """
        from PIL import Image

        out = np.empty((len(frames), self.crop, self.crop, 3), dtype=np.uint8)
        for i, frame in enumerate(frames):
            image = Image.fromarray(frame)
            width, height = image.size
            if height <= width:  # shorter side exact, longer side truncated, like torchvision
                size = (int(self.resize_shorter * width / height), self.resize_shorter)
            else:
                size = (self.resize_shorter, int(self.resize_shorter * height / width))
            if size != image.size:
                image = image.resize(size, resample=_PIL_MODES[self.interpolation])
            left = round((size[0] - self.crop) / 2.0)
            top = round((size[1] - self.crop) / 2.0)
            out[i] = np.asarray(image.crop((left, top, left + self.crop, top + self.crop)))
        return out.transpose(0, 3, 1, 2)

    def normalise(self, frames: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(N, 3, S, S) uint8 on any device -> normalised float tensor (float32 by default) on that device."""
        import torch

        dtype = dtype or torch.float32
        mean = torch.tensor(self.mean, device=frames.device, dtype=dtype).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=frames.device, dtype=dtype).view(1, 3, 1, 1) * 255.0
        return (frames.to(dtype) - mean) / std
