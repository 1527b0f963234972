"""The one line ``train-probe`` prints for a finished run (``TrainResult.summary``): the headline split's figures
(mean ± std and what the std varies over, for several seeds), the chance verdict, how the checkpoint was chosen,
the size of the probe and what the run cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from step_cache.training.chance import chance_note
from step_cache.training.metrics import format_percent, format_percent_spread
from step_cache.training.metrics_file import spread_note
from step_cache.training.records import SELECT_LABELS, headline_figures, run_chance


def run_line(m: dict[str, Any], run_dir: Path) -> str:
    """ "step: test top-1 93.6 ± 1.6% | pair ... | mean ± std over 3 seeds, init only | ... -> runs/step"."""
    split, figures, std = headline_figures(m)

    def pct(key: str) -> str:
        if std is None:
            return format_percent(figures.get(key))
        return format_percent_spread(figures.get(key), std.get(key))

    note = "" if split == "test" else " (no test split: val also chose the checkpoint)"
    selected = m.get("select_metric", "top1")  # runs written before the setting chose on top-1
    if m.get("checkpoint") == "last":  # --val none
        note += " | no val: fixed schedule, last epoch's weights"
    elif selected != "top1":
        note += f" | checkpoint chosen on {SELECT_LABELS[selected]}"
    if m.get("view_average", "softmax") != "softmax":  # runs from before it read "logits" from their unit
        note += f" | videos: clip {m['view_average']} averaged"
    spread = spread_note(m)  # "std over 3 seeds, init only"
    seeds = f" | mean ± {spread}" if spread else ""
    chance = chance_note(run_chance(m))  # " | not above chance (p = ...)" when it is not
    return (
        f"{m['probe']}: {split} top-1 {pct('top1')}{chance} | pair {pct('pair_accuracy')} | reversed "
        f"{pct('reversed_top1')} | shuffled {pct('shuffled_top1')}{note}{seeds} | {m['parameters']:,} params "
        f"({m['parameters_without_head']:,} without head) | {_time(m)} -> {run_dir}"
    )


def _time(m: dict[str, Any]) -> str:
    # The command's wall time is what a user waited; the training loop's share is the probe's own speed.
    loop = f"training loop {m['train_time_s']:.1f} s, {m['train_clips_per_s'] or 0:.0f} clips/s"
    if m.get("wall_time_s") is None:  # a metrics.json of format 1
        return loop
    return f"{m['wall_time_s']:.1f} s ({loop})"
