"""Console plumbing shared by the commands: log lines that do not break progress bars, one-line errors for the
project's own errors and a traceback, marked as a bug, for anything else."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterator

import typer
from tqdm import tqdm

try:  # recent typer runs its own copy of click (cli/app.py)
    from typer._click.exceptions import ClickException
    from typer._click.globals import get_current_context
except ImportError:
    from click import ClickException, get_current_context

from step_cache import __version__, stopping
from step_cache.cache.disk_space import DiskFullError, disk_full_message, is_disk_full
from step_cache.errors import StepCacheError
from step_cache.interface import command_line

BUG_HEADER = (
    f"step-cache {__version__} hit a bug (not a problem with your input): please report it on the step-cache issue "
    "tracker with the command you ran and the traceback below."
)


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


def _out_option() -> str | None:
    """The running command's --out, where its files go (None outside a command or without one)."""
    context = get_current_context(silent=True)
    out = context.params.get("out") if context is not None else None
    return str(out) if out else None


def _is_out_of_memory(error: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError (a RuntimeError) and MemoryError: the machine's limit, not a bug; not importing
    # torch here keeps `step-cache --help` fast.
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's errors (``StepCacheError``: bad input, mismatched caches, diverged runs) and the system's
    (``OSError``: missing files, full disks; out of memory) into one line on stderr and exit 1. Anything else is a
    bug: its traceback is printed under a header saying so, and the exit status is 1 too. STEP_CACHE_DEBUG=1
    re-raises every error with its traceback. Within it messages name command-line options
    (``step_cache.interface``). SIGINT and SIGTERM stop the command cleanly (exit 130 / 143)."""
    with stopping.handled():  # a stop request is never lost (step_cache/stopping.py)
        try:
            stopping.raise_if_stopping()  # a stop asked while the command started (stopping.install)
            with command_line():
                yield
        except KeyboardInterrupt:
            # Work is committed in steps (a training run about every 30 s): what came after the last commit is redone.
            typer.echo(
                "interrupted; work up to the last commit is saved: re-run the same command (train-probe: with "
                "--resume) to continue",
                err=True,
            )
            raise typer.Exit(128 + (stopping.requested() or signal.SIGINT)) from None
        except (typer.Exit, typer.Abort, ClickException):
            raise  # typer's own: exit statuses and usage errors
        except Exception as error:
            if os.environ.get("STEP_CACHE_DEBUG") == "1":
                raise
            if isinstance(error, OSError) and not isinstance(error, DiskFullError) and is_disk_full(error):
                where = error.filename or _out_option()  # a failed write() names no file: the command's --out
                error = DiskFullError(where or "", disk_full_message(where or "", "the command"))
            if isinstance(error, (StepCacheError, OSError)) or _is_out_of_memory(error):
                typer.echo(f"error: {error}", err=True)
            else:
                typer.echo(BUG_HEADER, err=True)
                typer.echo("".join(traceback.format_exception(error)).rstrip(), err=True)
            raise typer.Exit(1) from None
