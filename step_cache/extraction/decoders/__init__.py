"""Video decoder backends behind one interface (``VideoSource``), chosen by name.

- ``decord`` (default): a core dependency; CPU.
- ``pyav``: PyAV (a core dependency too, also used to write the generated videos), frame-threaded; CPU.
- ``torchcodec``: PyTorch's decoder on the CPU (extra ``torchcodec``; needs the system's FFmpeg libraries).
- ``torchcodec-cuda``: torchcodec decoding on the GPU (NVDEC); frames stay on the device through resize, crop
  and normalisation (see docs/performance.md; untested on a GPU so far).

Decoders may differ by a rounding of the colour conversion, so the decoder is part of a cache's extraction
settings: caches of different decoders are never resumed into or merged with each other.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from step_cache.errors import InputError
from step_cache.extraction.decoders.base import VideoDecodeError, VideoSource
from step_cache.extras import MissingExtraError

DEFAULT_DECODER = "decord"


@dataclass(frozen=True)
class DecoderSpec:
    module: str  # the backend module under step_cache.extraction.decoders
    source: str  # its VideoSource class
    requires: str  # the third-party module it imports
    extra: str  # the pyproject extra that installs it
    on_device: bool = False  # decodes on the compute device (CUDA), where the frames stay (device_decode.py)


DECODERS = {
    "decord": DecoderSpec("decord_backend", "DecordSource", "decord", "decord"),
    "pyav": DecoderSpec("pyav_backend", "PyAVSource", "av", "pyav"),
    "torchcodec": DecoderSpec("torchcodec_backend", "TorchCodecSource", "torchcodec", "torchcodec"),
    "torchcodec-cuda": DecoderSpec("torchcodec_backend", "TorchCodecSource", "torchcodec", "torchcodec", True),
}


def decoder_spec(name: str) -> DecoderSpec:
    """The backend called ``name``; ValueError naming the choices for an unknown one, MissingExtraError (one line
    naming the extra) when its library is not installed or does not load."""
    if name not in DECODERS:
        raise InputError(f"unknown decoder {name!r}: choose one of {', '.join(DECODERS)}")
    spec = DECODERS[name]
    try:
        importlib.import_module(spec.requires)
        if spec.requires == "torchcodec":  # imports fine without FFmpeg: load its FFmpeg-linked core now
            from torchcodec._internally_replaced_utils import load_core_libraries

            load_core_libraries()
    except ImportError:
        raise MissingExtraError(
            f"the {name} decoder needs {spec.requires}, which is not installed: pip install 'step-cache[{spec.extra}]'"
        ) from None
    except (OSError, RuntimeError):  # installed, but its native libraries do not load
        raise MissingExtraError(
            f"the {name} decoder cannot load {spec.requires}'s FFmpeg libraries: install FFmpeg's shared libraries "
            "(4 to 9; on Debian 12: apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 "
            "libswresample4 libavdevice59 libavfilter8)"
        ) from None
    return spec


def decoder_settings(name: str) -> dict[str, str]:
    """The manifest's ``extraction.decoder`` entry: none for decord, so caches written before decoders were
    pluggable (all decord) keep their settings and settings hash, and resume."""
    return {} if name == DEFAULT_DECODER else {"decoder": name}


def open_video(
    path: str | Path, decoder: str = DEFAULT_DECODER, threads: int = 1, device: str | None = None
) -> VideoSource:
    """Open ``path`` with the named backend; VideoDecodeError (naming the file and the problem) when it cannot be
    read. ``threads`` are the decoder's own threads (1 in decode worker processes, which parallelise already).
    ``device``: where an on-device decoder decodes (default "cuda"); CPU decoders ignore it."""
    spec = decoder_spec(decoder)
    source = getattr(importlib.import_module(f"{__name__}.{spec.module}"), spec.source)
    path = Path(path)
    if spec.on_device:
        return source(path, threads=threads, device=device or "cuda")
    return source(path, threads=threads)


__all__ = [
    "DECODERS",
    "DEFAULT_DECODER",
    "DecoderSpec",
    "VideoDecodeError",
    "VideoSource",
    "decoder_settings",
    "decoder_spec",
    "open_video",
]
