"""Frame preprocessing exactly as a timm backbone's eval transform does it (``timm.data.create_transform`` with
the model's resolved data config), for each of timm's crop modes:

- ``center`` (most models): resize keeping the aspect ratio so that the frame covers ``floor(crop / crop_pct)``
  (the shorter side, for a square input), then centre-crop to the input size;
- ``squash``: resize each side to ``floor(crop / crop_pct)`` (the aspect ratio is not kept), then centre-crop;
- ``border``: resize keeping the aspect ratio so that the frame fits inside ``floor(crop / crop_pct)``, then
  centre-crop or pad with the mean colour.

The input size may be non-square (height, width). Every PIL resampling filter timm names is supported (nearest,
bilinear, bicubic, box, hamming, lanczos). Resizing and cropping run in the decode workers on uint8 frames (small
to ship between processes, and PIL keeps torch out of the workers); normalisation runs on the compute device,
batched, right before the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from step_cache.errors import StepCacheError

if TYPE_CHECKING:
    import torch

# PIL.Image.Resampling values of the interpolation names timm's eval transform accepts (timm.data.transforms).
_PIL_MODES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
CROP_MODES = ("center", "squash", "border")
DEFAULT_CROP_PCT = 0.875  # timm's, when a config gives none


class PreprocessingError(StepCacheError, ValueError):
    """A data config that timm's eval transform would not accept either."""


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, (tuple, list)):
        return int(size[-2]), int(size[-1])
    return int(size), int(size)


@dataclass(frozen=True)
class Preprocessing:
    crop: int | tuple[int, int]  # output size fed to the backbone: the side of a square, or (height, width)
    scale: int | tuple[int, int]  # floor(crop / crop_pct): what the resize aims at (see the module docstring)
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.interpolation not in _PIL_MODES:
            raise PreprocessingError(
                f"interpolation {self.interpolation!r} is not one of timm's ({', '.join(sorted(_PIL_MODES))})"
            )
        if self.crop_mode not in CROP_MODES:
            raise PreprocessingError(f"crop mode {self.crop_mode!r} is not one of timm's ({', '.join(CROP_MODES)})")

    @classmethod
    def from_timm_config(cls, config: dict[str, Any], crop: int | tuple[int, int] | None = None) -> Preprocessing:
        """Build from ``timm.data.resolve_model_data_config(model)``; ``crop`` (a side or (height, width))
        overrides its input size."""
        crop_size = _pair(crop if crop is not None else config["input_size"])
        crop_pct = float(config.get("crop_pct") or DEFAULT_CROP_PCT)
        scale = tuple(math.floor(side / crop_pct) for side in crop_size)
        square = crop_size[0] == crop_size[1] and scale[0] == scale[1]
        return cls(
            crop=crop_size[0] if square else crop_size,
            scale=scale[0] if square else scale,
            interpolation=str(config.get("interpolation") or "bilinear"),  # timm's eval default
            mean=tuple(float(m) for m in config["mean"]),
            std=tuple(float(s) for s in config["std"]),
            crop_mode=str(config.get("crop_mode") or "center"),
        )

    @property
    def crop_size(self) -> tuple[int, int]:
        """(height, width) of the frames the backbone receives."""
        return _pair(self.crop)

    @property
    def scale_size(self) -> tuple[int, int]:
        return _pair(self.scale)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``extraction.preprocessing``. A square centre crop keeps the keys written before crop
        modes were supported (``crop``, ``resize_shorter``), so a cache extracted then still resumes: its pixels
        are the same. Other configurations add ``crop_mode`` and ``scale_size`` and give non-square sizes as
        [height, width]."""
        data: dict[str, Any] = {"crop": self.crop if isinstance(self.crop, int) else list(self.crop_size)}
        if self.crop_mode == "center" and isinstance(self.crop, int) and isinstance(self.scale, int):
            data["resize_shorter"] = self.scale
        else:
            data["crop_mode"] = self.crop_mode
            data["scale_size"] = list(self.scale_size)
        data.update(interpolation=self.interpolation, mean=list(self.mean), std=list(self.std))
        return data

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) a frame of this size is resized to before the crop, with timm's/torchvision's rounding."""
        target_h, target_w = self.scale_size
        if self.crop_mode == "squash":  # torchvision Resize((h, w))
            return target_h, target_w
        if self.crop_mode == "center" and target_h == target_w:
            # torchvision Resize(int): the shorter side exact, the longer one truncated
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = target_h, int(target_h * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)
        # timm ResizeKeepRatio: longest=0 ('center', non-square) covers the target, longest=1 ('border') fits in it
        ratio_h, ratio_w = height / target_h, width / target_w
        longest = 1.0 if self.crop_mode == "border" else 0.0
        ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
        return round(height * 1.0 / ratio), round(width * 1.0 / ratio)

    @property
    def fill(self) -> tuple[int, int, int]:
        """Colour of padding: the mean colour for 'border' (timm's CenterCropOrPad), black otherwise
        (torchvision's CenterCrop pads with 0 when a frame is smaller than the crop)."""
        if self.crop_mode == "border":
            return tuple(round(255 * m) for m in self.mean)
        return (0, 0, 0)

    def resize_and_crop(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 3, crop_h, crop_w) uint8, frame by frame with PIL as timm's eval transform does.

        The same PIL resize call as torchvision's/timm's resize on PIL images, then the same crop-or-pad
        arithmetic, so the pixels equal timm's own transform bit for bit; it also keeps torch out of the workers.
        """
        from PIL import Image

        crop_h, crop_w = self.crop_size
        out = np.empty((len(frames), crop_h, crop_w, 3), dtype=np.uint8)
        for i, frame in enumerate(frames):
            image = Image.fromarray(frame)
            height, width = self.resized_size(image.height, image.width)
            if (height, width) != (image.height, image.width):  # torchvision returns the image itself then
                image = image.resize((width, height), resample=_PIL_MODES[self.interpolation])
            out[i] = _center_crop_or_pad(np.asarray(image), crop_h, crop_w, self.fill)
        return out.transpose(0, 3, 1, 2)

    def normalise(self, frames: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(N, 3, H, W) uint8 on any device -> normalised float tensor (float32 by default) on that device."""
        import torch

        dtype = dtype or torch.float32
        mean = torch.tensor(self.mean, device=frames.device, dtype=dtype).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=frames.device, dtype=dtype).view(1, 3, 1, 1) * 255.0
        return (frames.to(dtype) - mean) / std


def _center_crop_or_pad(image: np.ndarray, crop_h: int, crop_w: int, fill: tuple[int, int, int]) -> np.ndarray:
    """torchvision's center_crop / timm's center_crop_or_pad on an (H, W, 3) array: pad a side smaller than the
    crop (the extra pixel of an odd difference goes right/bottom), then crop at round((size - crop) / 2)."""
    height, width = image.shape[:2]
    if crop_h > height or crop_w > width:
        top, left = max(0, crop_h - height) // 2, max(0, crop_w - width) // 2
        padded = np.empty((max(height, crop_h), max(width, crop_w), 3), dtype=image.dtype)
        padded[...] = np.asarray(fill, dtype=image.dtype)
        padded[top : top + height, left : left + width] = image
        image, (height, width) = padded, padded.shape[:2]
    top = round((height - crop_h) / 2.0)
    left = round((width - crop_w) / 2.0)
    return image[top : top + crop_h, left : left + crop_w]
