"""Optional dependencies (the package's extras) and the one-line error when one is missing."""

from __future__ import annotations

import importlib

from step_cache.errors import StepCacheError

# module -> the extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRAS = {"optuna": "sweep", "matplotlib": "report"}


class MissingExtraError(StepCacheError, RuntimeError):
    """An optional dependency needed for the requested work is not installed."""


def require(module: str, purpose: str, extra: str | None = None) -> None:
    """Raise MissingExtraError, naming ``purpose`` and the pip command that fixes it, unless ``module`` imports."""
    try:
        importlib.import_module(module)
    except ImportError:
        extra = extra or EXTRAS[module]
        raise MissingExtraError(
            f"{purpose} needs {module}, which is not installed: pip install 'step-cache[{extra}]'"
        ) from None
