"""A background thread that prepares the next batches while the training thread computes on the current one.

For the in-memory path the host work per batch (numpy gather, int8 dequantisation) runs in this thread, ``depth``
batches ahead; numpy and torch release the GIL in those copies, so it overlaps the step. The float32 cast stays
with the step: on a GPU it runs there, after the half-size copy; on the CPU, moved here, it made this thread the
bottleneck of a linear probe on a loaded machine. On CUDA the thread also pins each batch (torch's caching host
allocator recycles the pinned blocks once their copy has finished: the ring of pinned buffers) and copies it to
the device on a side stream; the training stream waits on the copy's event, never the host. The batches and their
order are exactly the source's, so results do not change.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch

from step_cache.streams import DeviceStreams
from step_cache.training.token_data import Batch, TokenSource

_END = object()
_PUT_TIMEOUT = 0.1  # seconds between checks of the stop flag while the queue is full


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(batches: Iterator[Batch], device: torch.device, depth: int = 2) -> Iterator[Batch]:
    """``batches`` as they would come, prepared ``depth`` ahead by a thread (on CUDA also pinned and copied to the
    device on a side stream). Stopping early (an exception, a ``break``) stops the thread and closes ``batches``."""
    streams = DeviceStreams(device)
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_PUT_TIMEOUT)
                return
            except queue.Full:
                continue

    def work() -> None:
        side = streams.new_stream()
        try:
            for tokens, labels, *rest in batches:  # rest: the clip indices
                if stop.is_set():
                    return
                with streams.on(side):
                    tokens = streams.pin(tokens).to(device, non_blocking=True)
                    labels = streams.pin(labels).to(device, non_blocking=True)
                    put((streams.record(side), tokens, labels, *rest))
        except BaseException as error:  # noqa: BLE001 - handed to the training thread, which raises it
            put(_Failure(error))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            put(_END)

    thread = threading.Thread(target=work, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            copied, tokens, labels, *rest = item
            streams.wait(copied)  # the device waits for the copy; the host goes on
            streams.used_on(tokens)  # made on the side stream, used on this one
            streams.used_on(labels)
            yield (tokens, labels, *rest)
    finally:
        stop.set()
        thread.join()


def source_batches(source: TokenSource, plan: Any, device: torch.device) -> Iterator[Batch]:
    """The batches of ``plan`` the fastest way for ``source``: in-memory ones prefetched by a thread; device-held
    ones as they are (already on the device); streamed ones from their reader processes (which read ahead)."""
    if source.mode == "memory":
        return prefetched(iter(source.batches(plan)), device)
    return iter(source.batches(plan))


__all__ = ["prefetched", "source_batches"]
