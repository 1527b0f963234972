"""One writer per shard directory: an ``flock``-ed lock file that names its holder.

The kernel releases an ``flock`` when its process dies, however it dies, so a lock left by a killed run is never
mistaken for a live one and two writers can never both hold it (a pid-file check has a window where two processes
both judge the same stale lock dead). The file also records pid, host and start time for the error message.
Caveat: flock does not work across machines on some network file systems; give each machine its own part
directory there (extract --num-parts / --part).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from step_cache.errors import StepCacheError

LOCK_NAME = ".lock"


class LockedError(StepCacheError, RuntimeError):
    """Another live process is writing to the same directory."""


class NotWritableError(StepCacheError, RuntimeError):
    """The directory cannot be written to (its permissions, or a read-only file system)."""


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class DirectoryLock:
    """``with DirectoryLock(out):`` holds ``out/.lock``. ``replaced_stale`` names a previous holder that died
    without releasing it (its run was interrupted). ``writer`` names the kind of writer in the refusal ("another
    extraction (pid ...) is writing here")."""

    def __init__(self, directory: str | Path, writer: str = "extraction"):
        self.path = Path(directory) / LOCK_NAME
        self.writer = writer
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.replaced_stale: dict | None = None
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._acquire()
        except OSError as error:
            if error.errno in _NOT_WRITABLE:  # one line that says what is wrong, instead of a bare [Errno 13]
                raise NotWritableError(
                    f"{self.path.parent}: cannot write here ({error.strerror}); choose a writable directory"
                ) from None
            raise

    def _acquire(self) -> DirectoryLock:
        for _ in range(10):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise LockedError(
                    f"{self.path.parent}: another {self.writer} (pid {holder.get('pid')} on {holder.get('host')}, "
                    f"since {holder.get('since')}) is writing here; wait for it to finish"
                ) from None
            # The holder we raced with may have released and unlinked the file after we opened it: then we hold
            # a lock on a deleted inode, which nobody else will see. Start again on the current file.
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            previous = _read(fd)
            if previous:
                self.replaced_stale = previous  # its process died holding the lock (the kernel released it)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self.owner).encode(), 0)
            self._fd = fd
            return self
        raise LockedError(f"{self.path}: could not take the lock (other processes keep replacing it)")

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so a waiting process re-checks the inode and starts afresh.
        self.path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def holder(directory: str | Path) -> dict | None:
    """Who holds ``directory``'s lock now (pid, host, since), or None when nobody does. Asked without taking the
    lock: the kernel's table of ``flock`` locks (``/proc/locks``) names the lock file's inode while a live process
    holds it, so a reader never makes a starting writer fail."""
    path = Path(directory) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        key = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        try:
            with open("/proc/locks", encoding="ascii") as table:
                held = any(line.split()[5] == key for line in table if "FLOCK" in line and len(line.split()) > 5)
        except OSError:  # no /proc (not Linux): a shared lock that fails while the writer holds its exclusive one
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            else:
                held = False
                fcntl.flock(fd, fcntl.LOCK_UN)
        return (_read(fd) or {"pid": "?"}) if held else None
    finally:
        os.close(fd)
