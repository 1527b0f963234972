"""One writer per shard directory: a lock file with the owner's pid and host, and stale-lock detection."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class LockedError(RuntimeError):
    """Another live process is writing to the same directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class DirectoryLock:
    """``with DirectoryLock(out):`` holds ``out/.lock``; a lock left by a dead process on this host is taken over."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.replaced_stale: dict | None = None

    def acquire(self) -> DirectoryLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is not None and not self._is_stale(holder):
                    raise LockedError(
                        f"{self.path.parent}: another extraction (pid {holder.get('pid')} on {holder.get('host')}, "
                        f"since {holder.get('since')}) is writing here; wait for it, or if it is not running "
                        f"delete {self.path}"
                    ) from None
                self.replaced_stale = holder
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(self.owner, handle)
            return self
        raise LockedError(f"{self.path}: could not take the lock (another process keeps creating it)")

    def _read_holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # unreadable or half-written: treat as stale

    def _is_stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # cannot check a process on another machine: assume it is alive
        pid = holder.get("pid")
        return not isinstance(pid, int) or not _alive(pid)

    def release(self) -> None:
        holder = self._read_holder()
        if holder is not None and holder.get("pid") == self.owner["pid"] and holder.get("host") == self.owner["host"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
