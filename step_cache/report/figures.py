"""PNG figures of training runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The Agg backend draws to files without a display; set before pyplot is imported anywhere.
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def comparison_bars(
    names: list[str],
    metrics: dict[str, list[float]],
    path: Path,
    errors: dict[str, list[float | None]] | None = None,
    split: str = "val",
    chance: list[float | None] | None = None,
) -> Path:
    """Grouped bars: one group per run, one bar per metric (accuracies in [0, 1]); ``errors`` (std over seeds,
    None where a run has one seed) draw error bars; ``chance`` (each run's top-1 chance level) a labelled mark."""
    figure, _ = draw_comparison(names, metrics, errors, split, chance)
    return _save(figure, path)


def draw_comparison(
    names: list[str],
    metrics: dict[str, list[float]],
    errors: dict[str, list[float | None]] | None = None,
    split: str = "val",
    chance: list[float | None] | None = None,
) -> tuple[Any, Any]:
    """(figure, axis) of ``comparison_bars``. Error bars only for runs with a std (>= 2 seeds): a zero-length bar
    with caps reads as "measured, no spread". The lines are labelled: pair accuracy's chance is 50% (two
    classes), top-1's is the run's majority-class rate."""
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(names) + 2), 4))
    width = 0.8 / max(1, len(metrics))
    x = np.arange(len(names))
    for i, (label, values) in enumerate(metrics.items()):
        shown = [np.nan if v is None else v for v in values]
        spread = [np.nan if e is None else e for e in (errors or {}).get(label, [None] * len(values))]
        has_spread = not all(np.isnan(spread))
        offset = x + (i - (len(metrics) - 1) / 2) * width
        axis.bar(offset, shown, width, label=label, yerr=spread if has_spread else None, capsize=2)
    axis.set_xticks(x, names, rotation=15, ha="right")
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy")
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle=":", label="pair chance (50%)")
    levels = [(position, level) for position, level in zip(x, chance or [], strict=False) if level is not None]
    for n, (position, level) in enumerate(levels):
        axis.hlines(level, position - 0.45, position + 0.45, color="black", linewidth=1.0, linestyle="--",
                    label="top-1 chance (majority class)" if n == 0 else None)  # fmt: skip
    axis.legend(fontsize=8, ncol=min(3, len(metrics) + 1))
    axis.set_title(f"Accuracy ({split} split), as is and with frames reversed")
    return figure, axis


def per_class_bars(name: str, per_class: dict[str, float], path: Path) -> Path:
    classes = list(per_class)
    figure, axis = plt.subplots(figsize=(max(6, 0.45 * len(classes) + 2), 3.5))
    axis.bar(range(len(classes)), [per_class[c] for c in classes], color="#4c78a8")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy")
    axis.set_title(f"{name}: per-class accuracy")
    return _save(figure, path)


def confusion(name: str, matrix: list[list[int]], classes: list[str], path: Path) -> Path:
    matrix = np.asarray(matrix, dtype=float)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4, 0.4 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    axis.set_yticks(range(len(classes)), classes, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(classes) <= 16:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                axis.text(
                    j,
                    i,
                    int(count),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black",
                )
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_title(f"{name}: confusion (rows normalised)")
    return _save(figure, path)


def training_curves(histories: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        line = loss_axis.plot(epochs, [h.get("train_loss") for h in history], label=f"{name} train")[0]
        loss_axis.plot(
            epochs, [h.get("val_loss") for h in history], linestyle="--", color=line.get_color(), label=f"{name} val"
        )
        acc_axis.plot(epochs, [h.get("val_top1") for h in history], color=line.get_color(), label=name)
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    loss_axis.legend(fontsize=7)
    acc_axis.set_xlabel("epoch")
    acc_axis.set_ylabel("validation top-1")
    acc_axis.set_ylim(0, 1)
    acc_axis.legend(fontsize=7)
    return _save(figure, path)
