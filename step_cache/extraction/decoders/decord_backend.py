"""decord (the default): builds a frame index from the packets on open, then seeks to each wanted frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from step_cache.extraction.decoders.base import check_file, check_frames, damaged, unopenable


class DecordSource:
    def __init__(self, path: Path, threads: int = 1):
        import av  # noqa: F401 - before decord, whose bundled FFmpeg loaded first breaks PyAV (see video.py)
        import decord  # imported lazily: worker processes import it once, and tests of other parts do not need it

        check_file(path)
        self.path = path
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        except Exception as error:  # noqa: BLE001 - decord raises bare RuntimeError/DECORDError for anything unreadable
            raise unopenable(path, error) from None
        self.num_frames = len(self._reader)
        rate = self._reader.get_avg_fps()
        self.fps = float(rate) if rate and rate > 0 else None

    def read(self, indices: list[int]) -> np.ndarray:
        try:
            frames = self._reader.get_batch(list(indices)).asnumpy()
        except Exception as error:  # noqa: BLE001 - any decoder error fails this video only
            raise damaged(self.path, error) from None
        return check_frames(self.path, frames, len(indices))

    def close(self) -> None:
        self._reader = None
