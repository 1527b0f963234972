"""How an error message names a setting: ``--weights`` under the ``step-cache`` command, ``weights=`` from Python.

The library raises the same errors for both; a message names a setting through ``option("weights")``, which reads
whether the call came from the command line (``command_line()``, entered by the CLI around each command) or from
Python (the default), so a Python user is never told to pass a command-line option.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_FROM_CLI = contextvars.ContextVar("step_cache_from_cli", default=False)


_UNSET = object()


def option(name: str, value: object = _UNSET) -> str:
    """The setting ``name`` (a keyword argument, ``snake_case``), with ``value`` if given, as the caller writes it:
    ``--pool-patches`` / ``--pool-patches 2`` under the command line, ``pool_patches=`` / ``pool_patches=2`` (a
    string value quoted: ``weights='random'``) from Python."""
    if _FROM_CLI.get():
        flag = "--" + name.replace("_", "-")
        return flag if value is _UNSET else f"{flag} {value}"
    argument = name.replace("-", "_") + "="
    return argument if value is _UNSET else f"{argument}{value!r}"


def switch(name: str, on: bool = True) -> str:
    """A boolean setting turned ``on`` (or off) as the caller writes it: ``--resume`` / ``resume=True``,
    ``--no-early-stop`` / ``early_stop=False``."""
    if _FROM_CLI.get():
        return "--" + ("" if on else "no-") + name.replace("_", "-")
    return f"{name.replace('-', '_')}={on}"


def from_command_line() -> bool:
    """Whether the current call came from the ``step-cache`` command (for messages whose wording differs more)."""
    return _FROM_CLI.get()


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within this block messages name command-line options (``option``)."""
    token = _FROM_CLI.set(True)
    try:
        yield
    finally:
        _FROM_CLI.reset(token)
