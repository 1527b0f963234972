"""Side streams, events and pinned host memory: what lets copies overlap compute on a GPU, behind one interface
that also runs on the CPU.

On CUDA, ``DeviceStreams`` is a thin layer over ``torch.cuda`` (a side stream per copy direction, events between
streams, pinned buffers from torch's caching host allocator, which hands a block out again only once the copies
recorded on it have finished: a ring of pinned buffers without bookkeeping of our own). On the CPU it is a
documented fake that keeps the same call sequence and runs it synchronously: no stream (program order), events
that are always complete, pinning a no-op. The extraction and training code therefore takes the same branch on
either device, and the CPU tests exercise the code that overlaps copies on a GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


class _Done:
    """The CPU's event: work is finished when the call returns."""

    def synchronize(self) -> None:
        """Nothing to wait for."""

    def query(self) -> bool:
        return True


DONE = _Done()


class DeviceStreams:
    """Streams and events of ``device`` (see the module docstring for the CPU fake)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def new_stream(self) -> Any:
        """A side stream (None on the CPU)."""
        return torch.cuda.Stream(self.device) if self.cuda else None

    def current(self) -> Any:
        return torch.cuda.current_stream(self.device) if self.cuda else None

    def on(self, stream: Any) -> contextlib.AbstractContextManager:
        """Queue the enclosed work on ``stream``."""
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def record(self, stream: Any = None) -> Any:
        """An event marking the end of the work queued so far on ``stream`` (default: the current one)."""
        if not self.cuda:
            return DONE
        event = torch.cuda.Event()
        event.record(stream if stream is not None else self.current())
        return event

    def wait(self, event: Any, stream: Any = None) -> None:
        """Make ``stream`` (default: the current one) wait for ``event`` on the device; the host does not wait."""
        if self.cuda:
            (stream if stream is not None else self.current()).wait_event(event)

    def pin(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` in page-locked memory (CUDA copies from it run asynchronously); itself on the CPU."""
        return tensor.pin_memory() if self.cuda else tensor

    def empty_pinned(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.cuda)

    def used_on(self, tensor: torch.Tensor, stream: Any = None) -> None:
        """``tensor`` (allocated on another stream) is used on ``stream``: its memory must not be reused before."""
        if self.cuda:
            tensor.record_stream(stream if stream is not None else self.current())


__all__ = ["DONE", "DeviceStreams"]
