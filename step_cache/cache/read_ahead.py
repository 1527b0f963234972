"""Asking the kernel, before a scattered read, for every chunk it will touch (``posix_fadvise(WILLNEED)``).

A streamed batch reads its clips' chunks (one clip, or one clip and layer, per chunk: 0.6-6 MB) at places in the
file the kernel cannot guess. Read one after the other, they keep the disk's queue at depth 1, and the kernel's
readahead (8 MB on the VM measured) reads past each chunk into bytes the epoch needs much later or never. Advising
all of a read's chunks first lets the kernel queue them together; the synchronous reads that follow find them in
the page cache or in flight, and readahead, which starts only on a miss, stays idle. Measured on a cold 5 GiB
cache (docs/performance.md, "Why streaming read below the sequential rate"): a random-order pass of 3 MB chunks
in one process, plain preads 394-464 -> 559-830 MB/s, ``read_stored`` per batch 230-299 -> 387-441 MB/s, and
15-19 % -> 0-2 % more bytes read than the cache holds.

The advice is a hint: it never changes what is read, only when the disk reads it. Where there is no
``posix_fadvise`` (not Linux), no file descriptor (an HDF5 driver other than sec2) or no chunk index, nothing is
advised. What is advised stays in the page cache only until the read that follows (at most one batch per reader).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import h5py
import numpy as np

_CAN_ADVISE = hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_WILLNEED")


class ChunkRanges:
    """Byte offset and size of each chunk of one dataset whose chunks span every axis after the clip axis and,
    in a layered dataset, the layer axis (``tokens``, ``token_scales``, ``cls``, ``cls_scales``)."""

    def __init__(self, dataset: h5py.Dataset, layered: bool):
        chunks = dataset.chunks
        self.name = dataset.name
        self.rows_per_chunk = chunks[0] if chunks else 0
        self.layered = layered
        layers = dataset.shape[1] if layered else 1
        n = -(-dataset.shape[0] // self.rows_per_chunk) if chunks else 0
        self.offset = np.full((n, layers), -1, dtype=np.int64)  # -1: not allocated (never written)
        self.size = np.zeros((n, layers), dtype=np.int64)
        self.row_bytes = _plain_row_bytes(dataset, layered)  # not None: the chunks can be read past HDF5
        if not chunks:
            return

        def visit(info: h5py.h5d.StoreInfo) -> None:
            coords = info.chunk_offset
            row, layer = coords[0] // self.rows_per_chunk, coords[1] if layered else 0
            if info.byte_offset is not None:
                self.offset[row, layer], self.size[row, layer] = info.byte_offset, info.size

        try:
            dataset.id.chunk_iter(visit)
        except (AttributeError, RuntimeError):  # HDF5 before 1.12.3 has no chunk iteration: advise nothing
            self.offset[:] = -1

    def ranges(self, first_row: int, count: int, layers: Iterable[int] | None) -> Iterable[tuple[int, int]]:
        """(offset, size) of the chunks holding rows ``first_row .. first_row + count - 1`` of ``layers``."""
        rows = slice(first_row // self.rows_per_chunk, (first_row + count - 1) // self.rows_per_chunk + 1)
        columns = slice(None) if layers is None or not self.layered else list(layers)
        offsets, sizes = self.offset[rows][:, columns].ravel(), self.size[rows][:, columns].ravel()
        return zip(offsets.tolist(), sizes.tolist(), strict=True)


def _plain_row_bytes(dataset: h5py.Dataset, layered: bool) -> int | None:
    """Bytes of one row (one clip, and one layer of a layered dataset) when every chunk of ``dataset`` holds its
    rows byte for byte as a C-ordered array does (``step_cache.cache.raw_chunks``): chunked, no filter
    (compression, shuffle, checksum), the machine's byte order, chunks spanning every axis after the clip (and
    layer) axis. Else None."""
    chunks, lead = dataset.chunks, 2 if layered else 1
    if not chunks or not dataset.dtype.isnative or dataset.id.get_create_plist().get_nfilters():
        return None
    if tuple(chunks[lead:]) != tuple(dataset.shape[lead:]) or (layered and chunks[1] != 1):
        return None
    return int(np.prod(dataset.shape[lead:], dtype=np.int64)) * dataset.dtype.itemsize


def file_descriptor(handle: h5py.File) -> int | None:
    """The operating system's descriptor of ``handle``'s file, or None (an HDF5 driver other than sec2)."""
    try:
        fd = handle.id.get_vfd_handle()
    except (OSError, ValueError, TypeError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def will_need(handle: h5py.File, ranges: Iterable[tuple[int, int]]) -> None:
    """Advise ``ranges`` (offset, size) of ``handle``'s file, adjacent or repeated ones merged into one call."""
    fd = file_descriptor(handle) if _CAN_ADVISE else None
    if fd is None:
        return
    start = end = -1
    for offset, size in sorted(r for r in ranges if r[0] >= 0):
        if offset <= end:  # adjacent, or the same chunk again (clips sharing a CLS chunk)
            end = max(end, offset + size)
            continue
        if end > start:
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
        start, end = offset, offset + size
    if end > start:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)


__all__ = ["ChunkRanges", "file_descriptor", "will_need"]
