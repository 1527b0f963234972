"""``StepCacheError``: the base of every error the project raises on purpose — bad input, a missing or damaged file,
a run or cache that does not fit the command. The CLI prints these as one line; anything else escaping a command is
a bug and is printed with its traceback (``cli/console.py``).

Each project error also derives from the built-in class it always had (``ValueError``, ``RuntimeError``), so code
that catches those keeps working."""

from __future__ import annotations


class StepCacheError(Exception):
    """An error the project raises on purpose, with a message meant for the user."""


class InputError(StepCacheError, ValueError):
    """An option or argument that is out of range, unknown or missing."""
