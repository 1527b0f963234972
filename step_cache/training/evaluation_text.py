"""The one line ``step-cache evaluate`` prints for ``evaluation.evaluate``'s metrics: what was scored (split, seeds,
videos), the figures (mean ± std over seeds), and the chance verdict, as train-probe prints its headline."""

from __future__ import annotations

from typing import Any

from step_cache.training.chance import chance_note
from step_cache.training.metrics import TOP_K, format_percent, format_percent_spread
from step_cache.training.metrics_file import spread_note


def evaluation_line(metrics: dict[str, Any]) -> str:
    """ "linear on 6 videos (6 clips; test split, mean over seeds 0, 1): top-1 50.0 ± 0.0% | not above chance
    (p = 0.66) | mean class ... | pair ... | reversed ... | shuffled ..."."""
    std = metrics.get("std")

    def pct(key: str) -> str:
        if std is None or metrics.get(key) is None:
            return format_percent(metrics.get(key))
        return format_percent_spread(metrics[key], std.get(key))

    shown = [f"top-1 {pct('top1')}{chance_note(metrics.get('chance'))}"]
    if len(metrics["classes"]) > TOP_K:
        shown.append(f"top-5 {pct('top5')}")
    shown += [
        f"mean class {pct('mean_class_accuracy')}",
        f"pair {pct('pair_accuracy')}",
        f"reversed {pct('reversed_top1')}",
        f"shuffled {pct('shuffled_top1')}",
    ]
    if metrics.get("view_average", "softmax") != "softmax":
        shown.append(f"videos: clip {metrics['view_average']} averaged")
    if metrics["excluded_clips"]:
        shown.append(f"{metrics['excluded_clips']} clips of unknown classes left out")
    if std is not None and (spread := spread_note(metrics)) is not None:
        shown.append(f"mean ± {spread}")
    return (
        f"{metrics['probe']} on {metrics['videos']} videos ({metrics['clips']} clips; {metrics['figures']}): "
        + " | ".join(shown)
    )
