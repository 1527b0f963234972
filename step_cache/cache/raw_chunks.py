"""Reading a shard's uncompressed chunks straight from its file (``os.preadv``), past HDF5.

A streamed batch reads its clips' chunks (0.6-6 MB each, scattered over the cache). Read through HDF5
(``read_direct``), an advised batch ran at 0.55-0.79x the same chunks read with plain preads and cost about a core
per GB/s, where plain preads cost a third of that (docs/performance.md, "Why streaming read below the sequential
rate"): a streaming reader on a small machine takes its CPU from the probe. An uncompressed chunk of a dataset
whose chunks span every axis after the clip (and layer) axis is, byte for byte, the C-ordered rows it holds, so
they are read with one ``preadv`` per stretch of chunks that lie back to back in the file, each row straight into
its place in the result.

Where that does not hold (a compressed or filtered dataset, another byte order, a chunk never written, a file
without a plain descriptor, a read of some tokens of each frame), or the read fails or comes up short, the read
goes through HDF5 as before, which reads the same bytes (tests/test_raw_chunks.py) and reports a damaged file as
it always did. ``STEP_CACHE_READ_VIA_HDF5=1`` sends every read through HDF5 (for comparisons).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np

from step_cache.cache.read_ahead import ChunkRanges, file_descriptor

_CAN_PREADV = hasattr(os, "preadv")
_MAX_BUFFERS = 512  # buffers per preadv call, well below every system's IOV_MAX (1024 on Linux)


def raw_reads_enabled() -> bool:
    return _CAN_PREADV and os.environ.get("STEP_CACHE_READ_VIA_HDF5") != "1"


def read_rows_raw(
    handle: h5py.File,
    chunks: ChunkRanges,
    pieces: list[tuple[int, int, int]],
    layers: Sequence[int] | None,
    out: np.ndarray,
) -> bool:
    """Read ``pieces`` ((first row, count, first position), ``selection.read_pieces``) of the dataset whose chunks
    ``chunks`` describes, every token of each row, into ``out`` (C-contiguous, first axis by position; for a
    layered dataset the second axis by ``layers``, positions into its layer axis, None: all). False where the
    dataset cannot be read this way or the read failed: the caller then reads it through HDF5."""
    row_bytes = chunks.row_bytes
    if row_bytes is None or not raw_reads_enabled() or not out.flags.c_contiguous or not out.flags.writeable:
        return False
    fd = file_descriptor(handle)
    if fd is None or not pieces:
        return fd is not None
    columns = list(range(chunks.offset.shape[1])) if layers is None else list(layers)
    columns = columns if chunks.layered else [0]
    position_bytes = out.nbytes // len(out) if len(out) else 0
    if position_bytes != len(columns) * row_bytes:
        return False
    rows = np.concatenate([np.arange(row, row + count) for row, count, _ in pieces])
    positions = np.concatenate([np.arange(at, at + count) for _, count, at in pieces])
    chunk, within = np.divmod(rows, chunks.rows_per_chunk)
    starts = chunks.offset[chunk][:, columns]  # (rows, columns)
    if (starts < 0).any():  # a chunk never written: HDF5 gives its fill value
        return False
    disk = (starts + (within * row_bytes)[:, None]).ravel()
    target = (positions[:, None] * position_bytes + np.arange(len(columns)) * row_bytes).ravel()
    order = np.argsort(disk, kind="stable")
    try:
        _read_runs(fd, disk[order], target[order], row_bytes, memoryview(out).cast("B"))
    except (OSError, EOFError):
        return False
    return True


def _read_runs(fd: int, disk: np.ndarray, target: np.ndarray, row_bytes: int, out: memoryview) -> None:
    """One preadv per stretch of rows that lie back to back on disk; rows back to back in ``out`` too share one
    buffer."""
    breaks = np.nonzero(np.diff(disk) != row_bytes)[0] + 1
    for run in np.split(np.arange(len(disk)), breaks):
        joins = np.nonzero(np.diff(target[run]) != row_bytes)[0] + 1
        buffers = [
            out[int(target[part[0]]) : int(target[part[0]]) + len(part) * row_bytes]
            for part in np.split(run, joins)
        ]  # fmt: skip
        offset = int(disk[run[0]])
        for first in range(0, len(buffers), _MAX_BUFFERS):
            group = buffers[first : first + _MAX_BUFFERS]
            offset = _preadv_all(fd, group, offset)


def _preadv_all(fd: int, buffers: list[memoryview], offset: int) -> int:
    """Fill ``buffers`` from ``offset`` on (a call may read less than asked, e.g. past 2 GiB on Linux); the offset
    after them. EOFError when the file ends first (a truncated shard)."""
    first = 0
    while first < len(buffers):
        done = os.preadv(fd, buffers[first:] if first else buffers, offset)
        if done <= 0:
            raise EOFError(offset)
        offset += done
        while first < len(buffers) and done >= len(buffers[first]):
            done -= len(buffers[first])
            first += 1
        if done:
            buffers[first] = buffers[first][done:]
    return offset


__all__ = ["raw_reads_enabled", "read_rows_raw"]
