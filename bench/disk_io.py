"""What the disk benchmarks (cls_read.py, scale.py) share: emptying the page cache and this process's I/O counters."""

from __future__ import annotations

import os
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
