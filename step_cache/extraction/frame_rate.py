"""A video's frame rate, read from its container (for clip durations in seconds and timeline times).

Imports PyAV only (no torch), so decode workers can call it.
"""

from __future__ import annotations

from pathlib import Path


def frame_rate(path: str | Path) -> float | None:
    """Frames per second of the first video stream (average rate, else the guessed one); None when the
    container does not say or cannot be read."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return float(rate) if rate else None
    except Exception:  # noqa: BLE001 - a probe only: an unreadable file is reported by the decoder itself
        return None
