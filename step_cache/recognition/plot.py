"""``timeline.png``: class probabilities of the windows over time, and the action segments as a coloured band."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from step_cache.recognition.segments import Segment

MAX_LINES = 8  # classes drawn: those reaching the highest probability somewhere (a legend of 174 helps no one)


def plot_timeline(
    path: Path,
    centres: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    segments: list[Segment],
    title: str,
    warning: str | None = None,
) -> Path:
    """Draw the figure; ``warning`` (e.g. the run is not above chance) is printed across the curves in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = np.argsort(-probabilities.max(axis=0), kind="stable")[:MAX_LINES]
    colours = {int(c): plt.cm.tab10(i % 10) for i, c in enumerate(shown)}
    figure, (curves, band) = plt.subplots(
        2, 1, figsize=(10, 4), sharex=True, gridspec_kw={"height_ratios": [4, 1]}, constrained_layout=True
    )
    for c in shown:
        curves.plot(centres, probabilities[:, c], color=colours[int(c)], label=classes[c], lw=1.5)
    curves.set_ylim(0, 1)
    curves.set_ylabel("probability")
    curves.set_title(title, fontsize=10)
    curves.legend(loc="upper right", fontsize=8, ncol=min(4, len(shown)))
    curves.grid(alpha=0.3)
    if warning:
        curves.text(0.5, 0.5, warning, transform=curves.transAxes, ha="center", va="center", fontsize=11,
                    color="red", wrap=True, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "red"})  # fmt: skip
    for segment in segments:
        index = classes.index(segment.label)
        colour = colours.get(index, "0.5")
        band.axvspan(segment.start_s, segment.end_s, color=colour, alpha=0.8)
        band.text((segment.start_s + segment.end_s) / 2, 0.5, segment.label, ha="center", va="center", fontsize=8)
    band.set_yticks([])
    band.set_ylabel("segments", fontsize=8)
    band.set_xlabel("time (s, window centres)")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
