"""A full disk: recognising it, and never letting HDF5 meet it.

HDF5 does not survive "No space left on device": the failed write is reported again by every object it frees,
its file state is left inconsistent, and closing the file can crash the process (a segmentation fault was seen
during extract). So a shard writer *reserves* its file's bytes before writing any token (``reserve``: the blocks
are allocated up front with ``posix_fallocate``, and a disk that fills afterwards cannot take them away), and
trims the unused rest once the file is complete. A disk that is too full fails the reservation, a clean Python
error, before HDF5 writes into space it does not have. ``is_disk_full`` recognises the error however it arrives
(``OSError`` with ENOSPC / EDQUOT, or an HDF5 message that quotes errno 28), so every command can say it in one
line (``disk_full_message``) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from step_cache.errors import StepCacheError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "errno = 28", "errno = 122")


class DiskFullError(StepCacheError, RuntimeError):
    """The disk under a writer is full; the message says so ("No space left on device", so ``is_disk_full`` knows
    it) and, from ``disk_full_message``, what was kept and what more is needed."""

    def __init__(self, path: str | Path, message: str | None = None) -> None:
        super().__init__(message or f"{path}: {os.strerror(errno.ENOSPC)}")
        self.filename = str(path)


def is_disk_full(error: BaseException | None) -> bool:
    """True when ``error`` (or an error it was raised from) says the disk or the quota is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return True
        if any(text in str(error).lower() for text in _FULL_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


def free_bytes(path: str | Path) -> int:
    """Free bytes for this user on the file system holding ``path`` (its nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_not_full(path: str | Path, least: int = 1 << 18) -> None:
    """DiskFullError when less than ``least`` bytes are free beside ``path``: a writer whose own bytes are
    reserved checks this between units of work, so a disk filled by another process stops it at once."""
    if free_bytes(path) < least:
        raise DiskFullError(path)


def reserve(path: str | Path, size: int) -> None:
    """Allocate the first ``size`` bytes of the existing file ``path`` now. DiskFullError when they do not fit (the
    file keeps its size); file systems without allocation support are left to write as they go."""
    fd = os.open(path, os.O_RDWR)
    try:
        before = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, 0, max(size, before))
        except OSError as error:
            if error.errno in _FULL_ERRNOS:
                os.ftruncate(fd, before)  # give back what a partial allocation took
                raise DiskFullError(path) from None
            if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    finally:
        os.close(fd)


def megabytes(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def disk_full_message(path: str | Path, what: str, written: int | None = None, needed: int | None = None) -> str:
    """One line: where the disk filled, what was kept, what more is needed and what is free, and that re-running
    the same command resumes. ``what`` names the work (e.g. "extraction")."""
    where = f"{path}: " if str(path) else ""  # no path known: say nothing rather than another disk's free space
    parts = [f"{where}out of disk space (No space left on device); {what} stopped"]
    if written is not None:
        parts.append(f"{megabytes(written)} written and kept")
    needs = f"about {megabytes(needed)} more needed, " if needed is not None else ""
    if str(path) or needs:
        parts.append(f"{needs}{megabytes(free_bytes(path))} free" if str(path) else needs.rstrip(", "))
    return "; ".join(parts) + ": free some space and re-run the same command to resume"


@contextlib.contextmanager
def full_disk_said(path: str | Path, what: str) -> Iterator[None]:
    """``with full_disk_said(out, "merge"):`` turns a full disk met inside (a lock, a manifest, a table) into a
    DiskFullError whose message is ``disk_full_message``'s one line."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as error:
        if not is_disk_full(error):
            raise
        raise DiskFullError(path, disk_full_message(path, what)) from None
