"""The ``step-cache`` command: a thin Typer app. Each sub-command lives in its own module and only parses
options and calls the library; the app object lives in ``cli.app``, and this module registers the commands."""

from __future__ import annotations

import gc
import importlib
import signal

from step_cache.cpu_budget import limit_spin_wait

# Before anything imports torch: libgomp reads its spin-wait setting once, when torch first loads it; a user's own
# OMP_WAIT_POLICY / GOMP_SPINCOUNT / KMP_BLOCKTIME wins (step_cache.cpu_budget).
limit_spin_wait()

from cli.app import app  # noqa: E402 - after limit_spin_wait on purpose

# Importing a command module registers its commands on the app, and `--help` lists them in registration order
# within each panel: this order puts each stage's main command first (extract, then its cache tools; train-probe...).
COMMAND_MODULES = (
    "cli.prepare",
    "cli.extract",
    "cli.cache",
    "cli.compact",
    "cli.train",
    "cli.sweep",
    "cli.timeline",
    "cli.report",
    "cli.demo",
)


def _register_commands() -> None:
    # Imported on demand so that `import cli.main` stays cheap; the command modules import only cli.app, never
    # this module.
    for module in COMMAND_MODULES:
        importlib.import_module(module)


def main() -> None:
    # SIGINT / SIGTERM are stop requests from the entry point on (cli/__main__.py, stopping.install), before
    # these imports
    _register_commands()
    try:
        app()
    finally:
        # The command is over (its work written, its exit status set): a Ctrl-C or SIGTERM arriving while the
        # interpreter shuts down must not turn a finished command into a KeyboardInterrupt exit (-2).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # A stop whose KeyboardInterrupt was raised inside exec() of a source string (dataclasses, namedtuple, as
        # lazy imports build classes) left CPython's "unhandled KeyboardInterrupt" mark set although the command
        # caught it, and `python -m cli` then killed itself with SIGINT at exit (-2 instead of 130/143). Every
        # exec() of a string clears that mark as it starts (CPython 3.8-3.13); a KeyboardInterrupt that really
        # leaves main() sets it again after this.
        exec("")
        # The process ends here. The interpreter's exit-time garbage collection walks every object torch and timm
        # created (9-11 s of a Ctrl-C'd extract on a busy machine); frozen objects are skipped, and everything was
        # written and closed by the command already.
        gc.freeze()


__all__ = ["_register_commands", "app", "main"]

if __name__ == "__main__":
    main()
