"""Console plumbing shared by the commands: log lines that do not break progress bars, one-line errors."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Iterator

import typer
from tqdm import tqdm

from step_cache import stopping
from step_cache.cache.disk_space import DiskFullError, disk_full_message, is_disk_full


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(verbose: bool = False) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose else "%(message)s"))
    logger = logging.getLogger("step_cache")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors (bad input, missing files, mismatched caches) into one line on stderr and a
    non-zero exit. STEP_CACHE_DEBUG=1 shows the traceback instead."""
    stopping.install()  # SIGINT and SIGTERM: a clean stop, never lost (step_cache/stopping.py)
    try:
        yield
    except KeyboardInterrupt:
        # Work is committed in steps (a training run about every 30 s): what came after the last commit is redone.
        typer.echo(
            "interrupted; work up to the last commit is saved: re-run the same command (train-probe: with "
            "--resume) to continue",
            err=True,
        )
        # The interpreter's exit-time garbage collection walks every object torch and timm created: seconds on a
        # busy machine. Frozen objects are skipped; everything was written and closed above.
        gc.freeze()
        raise typer.Exit(128 + (stopping.requested() or signal.SIGINT)) from None
    except (ValueError, RuntimeError, OSError) as error:
        if os.environ.get("STEP_CACHE_DEBUG") == "1":
            raise
        if isinstance(error, OSError) and not isinstance(error, DiskFullError) and is_disk_full(error):
            error = DiskFullError(error.filename or "", disk_full_message(error.filename or "", "the command"))
        typer.echo(f"error: {error}", err=True)
        gc.freeze()  # as above: a full disk or a refusal exits at once
        raise typer.Exit(1) from None
