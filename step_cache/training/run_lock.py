"""One writer per run directory: ``train_probe`` (one seed or ``--seeds``, ``--resume`` and ``--overwrite``
alike, and so ``sweep``'s retrain of its best trial) holds ``RUN/.lock`` from before it looks at or removes
anything in the directory until it has written the last file.

The lock is ``cache.locking.DirectoryLock``: an ``flock`` the kernel releases when its holder dies, however it
dies, so a second writer is refused naming the live holder's pid, and a killed run's directory is taken over
without a stale-lock dance (then ``--resume`` continues it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from step_cache.cache.locking import DirectoryLock

log = logging.getLogger(__name__)


@contextlib.contextmanager
def hold_run_dir(run_dir: str | Path) -> Iterator[DirectoryLock]:
    """``with hold_run_dir(out):`` makes ``out`` (created if needed) this process's to write; ``LockedError``
    (a RuntimeError naming the holder's pid, host and start time) when another live process writes it."""
    created = not Path(run_dir).exists()
    lock = DirectoryLock(run_dir, writer="train-probe run").acquire()
    try:
        if lock.replaced_stale:
            log.info(
                "%s: taking over from pid %s, which stopped while writing it", run_dir, lock.replaced_stale.get("pid"),
            )  # fmt: skip
        yield lock
    finally:
        lock.release()
        if created:  # a run refused before writing anything (bad options, missing cache) leaves no empty folder
            with contextlib.suppress(OSError):
                Path(run_dir).rmdir()
