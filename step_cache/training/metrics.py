"""Classification metrics on logits: top-k, per-class and mean class accuracy, confusion matrix, mirrored-pair
accuracy, and clip-logit averaging per video. Pure numpy (torch tensors are accepted and converted).

Conventions: ``logits`` is (N, C), ``labels`` is (N,) int in [0, C). Ties in a top-k ranking are broken towards
the lower class index (numpy's stable sort), so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().float().cpu().numpy()
    return np.asarray(array)


def _check(logits: np.ndarray, labels: np.ndarray) -> None:
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")


def topk_accuracy(logits: Any, labels: Any, k: int = 1) -> float:
    """Share of rows whose label is among the k highest logits (k is capped at C). NaN for no rows."""
    logits, labels = _numpy(logits), _numpy(labels).astype(np.int64)
    _check(logits, labels)
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    ranking = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((ranking == labels[:, None]).any(axis=1).mean())


def predictions(logits: Any) -> np.ndarray:
    """Top-1 class per row (lowest index on ties)."""
    return np.argmax(_numpy(logits), axis=1)


def confusion_matrix(logits: Any, labels: Any, num_classes: int | None = None) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    logits, labels = _numpy(logits), _numpy(labels).astype(np.int64)
    _check(logits, labels)
    num_classes = num_classes or logits.shape[1]
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions(logits)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix; NaN for classes with no clips."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / np.maximum(totals, 1), np.nan)


def mean_class_accuracy(matrix: np.ndarray) -> float:
    """Mean of per-class accuracies over the classes that have clips (NaN when none has)."""
    accuracies = per_class_accuracy(matrix)
    present = accuracies[~np.isnan(accuracies)]
    return float(present.mean()) if len(present) else float("nan")


def pair_indices(pairs: Sequence[tuple[str, str]], classes: Sequence[str]) -> list[tuple[int, int]]:
    """Class-name pairs as index pairs; pairs naming a class outside ``classes`` are skipped."""
    lookup = {name: index for index, name in enumerate(classes)}
    return [(lookup[a], lookup[b]) for a, b in pairs if a in lookup and b in lookup]


def pair_accuracy(logits: Any, labels: Any, pairs: Sequence[tuple[int, int]]) -> tuple[float, int]:
    """Accuracy on the clips of paired classes, each decided between the two classes of its pair only.

    A clip of class a (paired with b) is correct when logit[a] > logit[b] (a tie counts as wrong). Returns
    (accuracy, number of clips counted); accuracy is NaN when no clip belongs to a pair.
    """
    logits, labels = _numpy(logits), _numpy(labels).astype(np.int64)
    _check(logits, labels)
    partner = np.full(logits.shape[1], -1, dtype=np.int64)
    for a, b in pairs:
        partner[a], partner[b] = b, a
    rows = np.nonzero(partner[labels] >= 0)[0]
    if len(rows) == 0:
        return float("nan"), 0
    own = logits[rows, labels[rows]]
    other = logits[rows, partner[labels[rows]]]
    return float((own > other).mean()), len(rows)


# How the rows of one video (clips, test-view crops) are combined (``--view-average``): the mean of their softmax
# (V-JEPA's evaluation, the default) or of their logits (step-cache before test views; runs recorded then).
VIEW_AVERAGES = ("softmax", "logits")
LEGACY_VIEW_AVERAGE = "logits"  # runs recorded before the setting existed were evaluated so
UNITS = {"softmax": "video (clip softmax averaged)", "logits": "video (clip logits averaged)"}


def average_by_video(
    logits: Any, videos: Sequence[str], view_average: str = "logits"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean clip scores per video (multi-clip and multi-view evaluation): of the logits, or with ``view_average``
    "softmax" of each clip's softmax probabilities (then the result holds probabilities).

    Returns (video scores (V, C), video keys (V,), index of each video's first clip (V,)), videos in order of
    first appearance, so labels can be taken as ``clip_labels[first]``. Every metric of ``classification_metrics``
    ranks classes within a row, so it reads either kind of score.
    """
    if view_average not in VIEW_AVERAGES:
        raise ValueError(f"view_average must be one of {', '.join(VIEW_AVERAGES)}, got {view_average!r}")
    logits = _numpy(logits).astype(np.float64)
    if view_average == "softmax" and logits.size:
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        logits = shifted / shifted.sum(axis=1, keepdims=True)
    videos = np.asarray(videos)
    keys, first, inverse = np.unique(videos, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first-appearance order rather than sorted names
    sums = np.zeros((len(keys), logits.shape[1]))
    np.add.at(sums, inverse, logits)
    counts = np.bincount(inverse, minlength=len(keys))[:, None]
    return (sums / counts)[order], keys[order], first[order]


TOP_K = 5  # the k of "top5"; with this many classes or fewer every class is in the top k, so it is not shown


def classification_metrics(
    logits: Any, labels: Any, classes: Sequence[str], pairs: Sequence[tuple[int, int]] = ()
) -> dict[str, Any]:
    """The full summary used in ``metrics.json``: top-1/5, mean class and per-class accuracy, confusion matrix,
    pair accuracy (when pairs are given). Rows are whatever unit the caller chose (clips or videos)."""
    logits, labels = _numpy(logits), _numpy(labels).astype(np.int64)
    matrix = confusion_matrix(logits, labels, len(classes))
    per_class = per_class_accuracy(matrix)
    summary: dict[str, Any] = {
        "count": len(labels),
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, TOP_K),
        "mean_class_accuracy": mean_class_accuracy(matrix),
        "per_class_accuracy": {
            name: (None if np.isnan(value) else float(value)) for name, value in zip(classes, per_class, strict=True)
        },
        "confusion_matrix": matrix.tolist(),
    }
    if pairs:
        summary["pair_accuracy"], summary["pair_count"] = pair_accuracy(logits, labels, pairs)
    # NaN here means "does not apply" (no clip, or no clip of a paired class): None in metrics.json, which is
    # strict JSON; a NaN *loss* still stops a run (it means divergence).
    for key in ("top1", "top5", "mean_class_accuracy", "pair_accuracy"):
        if key in summary and math.isnan(summary[key]):
            summary[key] = None
    return summary


def format_percent(value: float | None, missing: str = "n/a") -> str:
    """A share in [0, 1] as people read it ("97.5%"); ``missing`` for None or NaN (a metric that does not apply)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{100 * value:.1f}%"


def format_percent_spread(mean: float | None, std: float | None, missing: str = "n/a") -> str:
    """Mean ± standard deviation of a share over seeds ("97.5 ± 1.2%")."""
    if mean is None or std is None or math.isnan(mean):
        return missing
    return f"{100 * mean:.1f} ± {100 * std:.1f}%"
