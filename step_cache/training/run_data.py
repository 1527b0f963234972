"""What a training run trains on, shared by ``train_probe``, the stacked sweeps and multi-seed runs: the mirrored
pairs, the token subset, the check that the splits can train and validate, and the ``data`` part of
``config.json``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from step_cache.cache.shards import ShardSet
from step_cache.catalog import read_pairs
from step_cache.training.config import TrainConfig, schedule_record
from step_cache.training.splits import DataError, Splits
from step_cache.training.token_data import TokenSelection
from step_cache.training.views import ViewTable, clean_rows

log = logging.getLogger(__name__)


def resolve_pairs(shards: ShardSet, pairs_file: str | None) -> list[tuple[str, str]]:
    if pairs_file is not None:
        return read_pairs(pairs_file, shards.classes)
    return [(a, b) for a, b in shards.manifest.pairs if a in shards.classes and b in shards.classes]


def check_splits(splits: Splits, shards: ShardSet, config: TrainConfig) -> None:
    where = ", ".join(map(str, shards.directories))
    clean = clean_rows(shards)  # augmented views are not clips of their own
    labelled = int((shards.labels[clean] >= 0).sum())
    if len(splits.train) == 0:
        raise DataError(
            f"{where}: no training clips ({labelled} of {int(clean.sum())} clips are labelled; training uses labelled "
            "clips whose split is 'train' or empty)"
        )
    if len(splits.val) == 0:
        reason = (
            "--val-fraction is 0"
            if config.val_fraction == 0
            else "every class has a single training video, so none can be held out"
        )
        raise DataError(f"{where}: no validation clips: the cache has no 'val' split and {reason}")
    missing = sorted(set(range(len(shards.classes))) - set(shards.labels[splits.train].tolist()))
    if missing:
        log.warning("no training clips for class(es): %s", ", ".join(shards.classes[c] for c in missing))


def check_select_metric(
    config: TrainConfig, splits: Splits, shards: ShardSet, pairs: Sequence[tuple[int, int]]
) -> None:
    """``select_metric="pair"`` picks the checkpoint by val pair accuracy: refused, before any training, where
    the validation split has no clip of a paired class (the metric would be undefined at every epoch)."""
    if config.select_metric != "pair":
        return
    where = ", ".join(map(str, shards.directories))
    if not pairs:
        raise DataError(
            f"{where}: --select-metric pair needs mirrored class pairs: the cache names none (give --pairs FILE)"
        )
    paired = {c for pair in pairs for c in pair}
    if not any(label in paired for label in shards.labels[splits.val].tolist()):
        raise DataError(f"{where}: --select-metric pair: no validation clip belongs to a paired class")


def data_record(
    shards: ShardSet,
    selection: TokenSelection,
    splits: Splits,
    pairs: Sequence[tuple[int, int]],
    requested: TrainConfig,
    resolved: TrainConfig,
    views: ViewTable,
) -> dict[str, Any]:
    """The ``data`` part of ``config.json``: the cache's identity, classes, pairs, tokens, splits, augmented views
    and schedule."""
    return {
        "features": [str(d.resolve()) for d in shards.directories],
        "manifest_hash": shards.manifest.content_hash(),
        "extraction": shards.manifest.extraction,
        "classes": list(shards.classes),
        "pairs": [[shards.classes[a], shards.classes[b]] for a, b in pairs],
        "tokens": {
            "subset": selection.subset,
            "tokens_per_frame": selection.tokens_per_frame,
            "cls_index": selection.cls_index,
        },
        "frames": shards.manifest.frames,
        "dim": shards.layout.dim,
        "splits": splits.counts(),
        **views.record(resolved.views),
        "schedule": schedule_record(requested, resolved, len(splits.train)),
    }


def token_subset(config: TrainConfig, shards: ShardSet) -> str:
    """The token subset of ``config.tokens``; ``auto``: only the per-frame CLS tokens for the linear probe (all it
    reads: same result, P times less memory and compute) unless it also averages the patch tokens (``avgpool``),
    every token for the others."""
    if config.tokens != "auto":
        return config.tokens
    cls_only = config.probe == "linear" and not (config.probe_options or {}).get("avgpool")
    return "cls" if cls_only and shards.layout.cls_tokens > 0 else "all"
