"""A writer thread behind a bounded queue: extraction's main thread hands finished videos over and goes back to
batching frames for the backbone, while this thread writes shards (h5py writes, and at each roll-over the shard's
fsync and sha256, which release the GIL) off the hot path.

Items are handled one at a time in the order they were put, so the cache sees exactly the sequence of writes a
single thread would make. An error in the handler stops the thread; the main thread gets it (the same exception)
at its next ``put`` or at ``close``. ``close`` handles what is still queued first: whole videos already computed
are written before a run stops, interrupted or not.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = object()
QUEUE_DEPTH = 16  # videos computed ahead of the writer: bounds memory (a video's tokens are 1-50 MB)


class WriteQueue:
    """``handle(item)`` for every ``put(item)``, in a thread of its own."""

    def __init__(self, handle: Callable[[Any], None], depth: int = QUEUE_DEPTH, name: str = "shard-writer") -> None:
        self._handle = handle
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None  # not yet raised in the main thread
        self._failed = False  # for good: what is queued after a failure is dropped
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._items.get()
            if item is _STOP:
                return
            if self._failed:
                continue  # after a failure the rest is dropped; close() or put() raises it
            try:
                self._handle(item)
            except BaseException as error:  # noqa: BLE001 - handed to the main thread, which raises it
                self._error, self._failed = error, True

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item: Any) -> None:
        """Queue ``item`` (waits while the queue is full); raises the writer's error if it has failed."""
        self._raise_if_failed()
        self._items.put(item)

    def close(self) -> None:
        """Handle everything queued, stop the thread, and raise the writer's error if it failed."""
        if self._thread.is_alive():
            self._items.put(_STOP)
            self._thread.join()
        self._raise_if_failed()


__all__ = ["QUEUE_DEPTH", "WriteQueue"]
