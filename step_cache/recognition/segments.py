"""Action segments from a timeline of windows: each window votes for its top class when its confidence above
chance reaches ``min_confidence``, over the stretch of time it stands for (one stride around its centre);
consecutive votes for one class merge into a segment; segments shorter than ``min_length`` seconds are dropped and
their neighbours of the same class joined again.

Confidence is measured from chance, 1/C for C classes: (p - 1/C) / (1 - 1/C), 0 for a window that cannot tell the
classes apart and 1 for a certain one. A bare probability threshold meant different things for different class
counts: with 2 classes every top probability is at least 0.5, so 0.5 could never filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from step_cache.errors import InputError
from step_cache.interface import option


@dataclass
class Segment:
    start_s: float
    end_s: float
    label: str
    mean_prob: float  # mean top-class probability of its windows
    windows: int  # windows that voted for it (not those of short noise it absorbed)

    @property
    def length(self) -> float:
        return self.end_s - self.start_s


def check_segment_options(min_confidence: float, min_length: float) -> None:
    """InputError naming the option for a confidence outside [0, 1] (or NaN: every comparison with it is false,
    so it silently kept nothing) or a negative length."""
    if not 0.0 <= min_confidence <= 1.0:
        raise InputError(
            f"{option('min_confidence')} must be from 0 to 1 (confidence above chance: 0 keeps every window, 1 only "
            f"certain ones), got {min_confidence}"
        )
    if not min_length >= 0.0:
        raise InputError(f"{option('min_length')} must be 0 or more seconds, got {min_length}")


def above_chance(probabilities: np.ndarray) -> np.ndarray:
    """(N,) confidence of each row's top class measured from chance: (p_top - 1/C) / (1 - 1/C), in [0, 1]."""
    classes = probabilities.shape[1]
    if classes < 2:
        return np.ones(len(probabilities))
    return (probabilities.max(axis=1) - 1 / classes) / (1 - 1 / classes)


def merge_segments(
    starts: np.ndarray,
    ends: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    *,
    min_confidence: float = 0.5,
    min_length: float = 0.0,
) -> list[Segment]:
    """Segments of windows (``starts``/``ends`` in seconds, ``probabilities`` (N, C)), in time order."""
    check_segment_options(min_confidence, min_length)
    if len(starts) == 0:
        return []
    centres = (np.asarray(starts) + np.asarray(ends)) / 2
    # Each window stands for the time closer to its centre than to its neighbours' centres.
    bounds = np.concatenate([[starts[0]], (centres[1:] + centres[:-1]) / 2, [ends[-1]]])
    top = probabilities.argmax(axis=1)
    confident = above_chance(probabilities) >= min_confidence
    votes = [int(c) if ok else -1 for c, ok in zip(top, confident, strict=True)]
    runs = _runs(votes, bounds, probabilities.max(axis=1))
    kept = [run for run in runs if run[0] >= 0 and bounds[run[2]] - bounds[run[1]] >= min_length]
    merged: list[list] = []
    for label, first, stop, probs in kept:
        if merged and merged[-1][0] == label and _only_gaps_between(runs, merged[-1][2], first, min_length, bounds):
            merged[-1][2], merged[-1][3] = stop, merged[-1][3] + probs
        else:
            merged.append([label, first, stop, probs])
    return [
        Segment(float(bounds[first]), float(bounds[stop]), classes[label], float(np.mean(probs)), len(probs))
        for label, first, stop, probs in merged
    ]


def _runs(votes: list[int], bounds: np.ndarray, top_probs: np.ndarray) -> list[tuple[int, int, int, list[float]]]:
    """(label, first window, one past the last, their top probabilities) of each run of equal votes."""
    runs, first = [], 0
    for i in range(1, len(votes) + 1):
        if i == len(votes) or votes[i] != votes[first]:
            runs.append((votes[first], first, i, [float(p) for p in top_probs[first:i]]))
            first = i
    return runs


def _only_gaps_between(runs: list, stop: int, first: int, min_length: float, bounds: np.ndarray) -> bool:
    """Whether every run between windows ``stop`` and ``first`` was dropped as too short: the same class on both
    sides is then one segment interrupted by noise (a long stretch of no confident class still separates)."""
    return all(bounds[r[2]] - bounds[r[1]] < min_length for r in runs if r[1] >= stop and r[2] <= first)
