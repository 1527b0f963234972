"""PyAV (FFmpeg through its Python binding), frame-threaded (thread_type AUTO).

On open the packets are read without decoding them (cheap) to list every frame's presentation timestamp and the
keyframes, as decord does: frame ``i`` is the i-th timestamp in ascending order. Reading then decodes forward
from the last keyframe at or before each wanted frame, seeking only when that keyframe lies beyond the decoder's
position: sparse samples of a long video seek from keyframe to keyframe, dense ones decode straight through.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from step_cache.extraction.decoders.base import (
    NO_FRAMES,
    VideoDecodeError,
    check_file,
    check_frames,
    damaged,
    unopenable,
)


class PyAVSource:
    def __init__(self, path: Path, threads: int = 1):
        import av

        check_file(path)
        self.path = path
        try:
            self._container = av.open(str(path))
        except Exception as error:  # noqa: BLE001 - av.error.* (and OSError) for anything unreadable
            raise unopenable(path, error) from None
        if not self._container.streams.video:
            self.close()
            raise VideoDecodeError(f"{path}: not a readable video (the file has no video stream)")
        self._stream = stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads; thread_count 0 lets FFmpeg choose
        stream.thread_count = threads
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.num_frames, self._pts, self._keyframes = self._index()
        self._position = {pts: i for i, pts in enumerate(self._pts)} if self._pts is not None else {}
        self._frames = None  # the running decode iterator, and the index of the last frame it gave
        self._last = -1

    def _index(self) -> tuple[int, list[int] | None, list[int]]:
        """(frames, their timestamps in presentation order or None when packets carry none, keyframe indices)."""
        packets = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0 or getattr(packet, "is_discard", False):  # flush packet / before an edit list
                    continue
                packets.append((packet.pts, packet.is_keyframe))
        except Exception:  # noqa: BLE001 - a file cut short: index what is there, as decord does
            pass
        if not packets:
            raise VideoDecodeError(f"{self.path}: not a readable video ({NO_FRAMES})")
        if any(pts is None for pts, _ in packets):  # e.g. a raw stream: frames are counted in decoding order
            return len(packets), None, [i for i, (_, key) in enumerate(packets) if key] or [0]
        packets.sort(key=lambda packet: packet[0])
        keyframes = [i for i, (_, key) in enumerate(packets) if key] or [0]
        return len(packets), [pts for pts, _ in packets], keyframes

    def read(self, indices: list[int]) -> np.ndarray:
        wanted = sorted(indices)
        found: dict[int, np.ndarray] = {}
        try:
            for index in wanted:
                if index not in found:
                    found[index] = self._decode_at(index)
        except VideoDecodeError:
            raise
        except Exception as error:  # noqa: BLE001 - av.error.* while decoding: this video fails, nothing else
            raise damaged(self.path, error) from None
        frames = np.stack([found[index] for index in indices]) if indices else np.empty((0, 0, 0, 3), np.uint8)
        return check_frames(self.path, frames, len(indices))

    def _decode_at(self, index: int) -> np.ndarray:
        if not 0 <= index < self.num_frames:
            raise VideoDecodeError(f"{self.path}: frame {index} is outside the video's {self.num_frames} frames")
        keyframe = self._keyframes[bisect.bisect_right(self._keyframes, index) - 1]
        # Decode forward when the wanted frame is ahead and no keyframe lies between (a seek would land before it);
        # otherwise seek to its keyframe.
        if self._frames is None or index <= self._last or keyframe > self._last + 1:
            self._seek(keyframe)
        frame = self._decode_until(index)
        if frame is None:  # the seek landed past the frame (an unusual GOP layout): decode from the start
            self._seek(0, start=True)
            frame = self._decode_until(index)
        if frame is None:
            raise damaged(self.path, f"frame {index} of {self.num_frames} could not be decoded")
        return frame

    def _seek(self, keyframe: int, start: bool = False) -> None:
        if self._pts is None or start:
            self._container.seek(0, stream=self._stream) if self._pts is not None else self._container.seek(0)
        else:
            self._container.seek(self._pts[keyframe], stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last = -1 if self._pts is None or start else keyframe - 1
        self._counted = -1  # frames decoded since a seek to the start (files without timestamps)

    def _decode_until(self, index: int) -> np.ndarray | None:
        """Decode forward to frame ``index``; None when a later frame (or the end) comes first."""
        for frame in self._frames:
            if self._pts is None:
                self._counted += 1
                position = self._counted
            else:
                position = self._position.get(frame.pts)
                if position is None:  # a frame the index does not know (no packet timestamp of its own)
                    continue
            self._last = position
            if position == index:
                return frame.to_ndarray(format="rgb24")
            if position > index:
                return None
        self._frames = None
        return None

    def close(self) -> None:
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()
