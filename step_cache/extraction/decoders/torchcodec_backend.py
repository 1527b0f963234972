"""torchcodec (PyTorch's decoder) on the CPU, or on a CUDA GPU (NVDEC) where frames stay on the device.

``seek_mode="exact"`` scans the file on open to index every frame, as decord does, so frame ``i`` is the same
frame for both. torchcodec loads the system's FFmpeg shared libraries (4 to 8), which its wheel does not bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from step_cache.extraction.decoders.base import check_file, check_frames, damaged, unopenable


class TorchCodecSource:
    """CPU: ``read`` gives (N, H, W, 3) uint8 numpy arrays like every backend. CUDA (``device="cuda[:N]"``):
    ``read_tensor`` gives (N, 3, H, W) uint8 tensors on that GPU (UNTESTED on a GPU: none was lent)."""

    def __init__(self, path: Path, threads: int = 1, device: str = "cpu"):
        from torchcodec.decoders import VideoDecoder

        check_file(path)
        self.path = path
        self.device = device
        try:
            self._decoder = VideoDecoder(
                str(path),
                seek_mode="exact",
                num_ffmpeg_threads=threads,  # no effect on CUDA
                device=device,
                dimension_order="NHWC" if device == "cpu" else "NCHW",
            )
            metadata = self._decoder.metadata
        except Exception as error:  # noqa: BLE001 - RuntimeError/ValueError from FFmpeg for anything unreadable
            raise unopenable(path, error) from None
        self.num_frames = int(metadata.num_frames or 0)
        fps = metadata.average_fps
        self.fps = float(fps) if fps else None

    def _frames_at(self, indices: list[int]) -> Any:
        try:
            return self._decoder.get_frames_at(indices=list(indices)).data
        except Exception as error:  # noqa: BLE001 - any decoder error fails this video only
            raise damaged(self.path, error) from None

    def read_tensor(self, indices: list[int]) -> Any:
        """Frames at ``indices`` as an (N, 3, H, W) uint8 tensor on the decoder's device."""
        frames = self._frames_at(indices)
        return frames.permute(0, 3, 1, 2) if self.device == "cpu" else frames

    def read(self, indices: list[int]) -> np.ndarray:
        frames = self._frames_at(indices)
        if self.device != "cpu":
            frames = frames.permute(0, 2, 3, 1).contiguous().cpu()
        return check_frames(self.path, frames.numpy(), len(indices))

    def close(self) -> None:
        self._decoder = None
