"""Is a run above chance? A one-sided exact binomial test of its top-1 against the majority-class rate of the split.

The null hypothesis is a classifier that knows nothing about the videos: the best it can do is always name the
split's most frequent class, so its top-1 is the majority-class rate ``level`` (1/C on a balanced split). Under it
the number of correct videos out of ``trials`` is Binomial(trials, level); the p-value is the chance of getting
``correct`` or more that way, and the run is ``above`` chance when it is below ``alpha``. With several seeds
(``--seeds``) the seeds' videos are pooled (sums of correct and trials): the seeds score the same videos, so the
pooled count is not a sample of independent videos, but it is what "the configuration beats chance" means.

Everything needed to recompute the test is stored with it (``correct``, ``trials``, ``level``, ``alpha``), e.g.
``scipy.stats.binomtest(correct, trials, level, alternative="greater").pvalue``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ALPHA = 0.05  # significance level of the one-sided test


def binomial_tail(correct: int, trials: int, level: float) -> float:
    """P(X >= correct) for X ~ Binomial(trials, level), summed in log space (stable for thousands of trials)."""
    if correct <= 0:
        return 1.0
    if correct > trials:
        return 0.0
    if level >= 1.0:
        return 1.0
    if level <= 0.0:
        return 0.0
    log_p, log_q = math.log(level), math.log1p(-level)
    log_terms = [
        math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1) + i * log_p + (trials - i) * log_q
        for i in range(correct, trials + 1)
    ]
    peak = max(log_terms)
    return min(1.0, math.exp(peak) * math.fsum(math.exp(t - peak) for t in log_terms))


def chance_test(correct: int, trials: int, majority: int, alpha: float = ALPHA) -> dict[str, Any] | None:
    """The ``chance`` record of ``metrics.json``: ``level`` (majority-class rate), ``p_value``, ``above``, and
    ``correct``, ``trials``, ``majority``, ``alpha`` to recompute it. None when there is nothing to test."""
    if trials <= 0:
        return None
    level = majority / trials
    p_value = binomial_tail(correct, trials, level)
    return {
        "level": level,
        "p_value": p_value,
        "above": p_value < alpha,
        "correct": int(correct),
        "trials": int(trials),
        "majority": int(majority),
        "alpha": alpha,
        "test": "one-sided exact binomial: top-1 greater than the majority-class rate",
    }


def counts(figures: dict[str, Any]) -> tuple[int, int, int] | None:
    """(correct, trials, majority-class count) of one split's metrics, from its confusion matrix (videos)."""
    matrix = figures.get("confusion_matrix")
    if not matrix:
        return None
    trials = sum(sum(row) for row in matrix)
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    majority = max(sum(row) for row in matrix)
    return correct, trials, majority


def chance_of(figures: dict[str, Any] | None) -> dict[str, Any] | None:
    """The chance record of one split's metrics (``classification_metrics`` output)."""
    found = counts(figures or {})
    return chance_test(*found) if found else None


def pooled_chance(splits: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The chance record of several seeds' metrics of the same split: correct, trials and majority counts summed."""
    found = [counts(figures or {}) for figures in splits]
    if not found or any(f is None for f in found):
        return None
    correct, trials, majority = (sum(column) for column in zip(*found, strict=True))
    record = chance_test(correct, trials, majority)
    if record is not None:
        record["seeds"] = len(found)
    return record


def chance_note(chance: dict[str, Any] | None) -> str:
    """ "" when the run beats chance (or there is no test); else " | not above chance (p = 0.41)", for a line."""
    if not chance or chance.get("above", True):
        return ""
    return f" | not above chance (p = {format_p(chance['p_value'])})"


def format_p(p_value: float) -> str:
    return f"{p_value:.2g}" if p_value >= 1e-3 else f"{p_value:.1e}"
