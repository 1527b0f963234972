"""What a command that uses a trained run says about its answers: a given ``top_k`` above the class count
(clamped, said once; nothing when it was not given) and a run whose headline top-1 is not above chance
(``chance.py``), so that a confident-looking prediction or timeline of a run that never beat chance does not pass
for an answer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from step_cache.errors import InputError
from step_cache.interface import option
from step_cache.training import runs
from step_cache.training.chance import chance_note
from step_cache.training.records import headline_split, run_chance

log = logging.getLogger(__name__)


DEFAULT_TOP_K = 5


def clamp_top_k(top_k: int | None, classes: Sequence[str]) -> int:
    """The classes to list per video: ``top_k`` capped at the number of classes, with one log line when a given
    ``top_k`` was above it; None (not given) is 5, capped silently."""
    if top_k is None:
        return min(DEFAULT_TOP_K, len(classes))
    if top_k < 1:
        raise InputError(f"{option('top_k', top_k)}: must be >= 1")
    if top_k > len(classes):
        log.warning(
            "%s is more than the run's %d classes: giving all %d", option("top_k", top_k), len(classes), len(classes)
        )
    return min(top_k, len(classes))


def not_above_chance(run_dir: str | Path) -> str | None:
    """ "RUN: test top-1 not above chance (p = 0.41) ..." for a run whose headline split did not beat chance, else
    None (also for a run whose metrics.json is missing)."""
    metrics = runs.read_final_metrics(run_dir)
    note = chance_note(run_chance(metrics))
    if not note:
        return None
    return (
        f"{run_dir}: {headline_split(metrics)} top-1{note.removeprefix(' |')}: its answers are no better than "
        "always naming the most frequent class"
    )


def warn_if_not_above_chance(run_dir: str | Path) -> str | None:
    """Log ``not_above_chance`` as a warning when it applies; returns it."""
    note = not_above_chance(run_dir)
    if note:
        log.warning("%s", note)
    return note
