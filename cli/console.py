"""Console plumbing shared by the commands: log lines that do not break progress bars, one-line errors."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import typer
from tqdm import tqdm

from step_cache.interface import command_line


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
    non-zero exit. STEP_CACHE_DEBUG=1 shows the traceback instead. Within it messages name command-line
    options (``step_cache.interface``)."""
    try:
        with command_line():
            yield
    except KeyboardInterrupt:
        # Work is committed in steps (a training run about every 30 s): what came after the last commit is redone.
        typer.echo(
            "interrupted; work up to the last commit is saved: re-run the same command (train-probe: with "
            "--resume) to continue",
            err=True,
        )
        raise typer.Exit(130) from None
    except (ValueError, RuntimeError, OSError) as error:
        if os.environ.get("STEP_CACHE_DEBUG") == "1":
            raise
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
