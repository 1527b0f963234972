"""What the disk benchmarks (cls_read.py, scale.py) share: emptying the page cache (all of it, or only some files'
pages) and this process's I/O counters."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def io_counters() -> dict[str, int]:
    """/proc/self/io: this process's and its reaped children's I/O (``read_bytes``: bytes read from storage)."""
    lines = Path("/proc/self/io").read_text().split("\n")
    return {key: int(value) for key, value in (line.split(": ") for line in lines if line)}


def drop_page_cache() -> bool:
    """Empty the page cache (root only); False where that is not allowed."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def evict(paths: Iterable[Path]) -> bool:
    """Drop ``paths``' pages from the page cache (posix_fadvise DONTNEED after a sync): their next read comes from
    the disk, while other processes on a shared machine keep their cache. Any user may; False where the call does
    not exist (not Linux)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True
