"""What ``evaluate`` scores when it is not told: the run's headline split, every seed's checkpoint, and a cache whose
tokens differ from the run's only by int8 storage (``step-cache compact --dtype int8``: read back as floats).

- Split: ``test`` when the cache has test clips (the run's headline when it trained on this cache), else ``val``
  on the run's own cache (its headline then) and ``all`` on another; scoring clips that the run's own selection
  puts in train (``all``, ``train``) draws a warning, since those figures say how well the probe remembers, not
  how it generalises.
- Seeds: a ``--seeds`` run is scored with every seed's best checkpoint (``seeds/seed-<s>/best.pt``) and reported as
  the mean ± std, like its ``metrics.json``; ``seed`` picks one.
- int8: the reader dequantizes int8 tokens (``cache.quantize``: within half a scale step of the stored floats), so
  the probe gets the tokens it was trained on up to that rounding; nothing else may differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from step_cache.cache.shards import ShardSet
from step_cache.interface import option
from step_cache.training import runs
from step_cache.training.splits import DataError, Splits

log = logging.getLogger(__name__)

EVAL_SPLITS = ("all", "train", "val", "test")
# Extraction settings that int8 storage changes (the values are the same tokens, quantized per token).
_STORAGE = ("tokens.dtype", "tokens.scale_dtype", "tokens.dequantized_from")


def default_split(shards: ShardSet, record: dict[str, Any]) -> str:
    """``test`` when the cache has labelled test clips; else ``val`` on the run's own cache (its headline split),
    ``all`` on another cache."""
    if bool(np.any((shards.splits == "test") & (shards.labels >= 0))):
        return "test"
    own = record["data"].get("manifest_hash") == shards.manifest.content_hash()
    return "val" if own else "all"


def check_split(split: str) -> None:
    if split not in EVAL_SPLITS:
        raise DataError(f"{option('split', split)}: unknown split; choose one of: {', '.join(EVAL_SPLITS)}")


def warn_training_clips(indices: np.ndarray, chosen: Splits, shards: ShardSet) -> int:
    """Warn when clips of the run's training selection (as the run selects it on this cache) are scored; returns
    how many videos of them are."""
    trained = np.intersect1d(indices, chosen.train)
    if len(trained) == 0:
        return 0
    videos = len(set(shards.videos[trained].tolist()))
    total = len(set(shards.videos[indices].tolist()))
    log.warning(
        "%d of the %d videos scored are in the run's training selection: their figures say how well the probe "
        "remembers them, not how it does on new videos (use %s or val)", videos, total, option("split", "test"),
    )  # fmt: skip
    return videos


def seed_checkpoints(run_dir: str, seed: int | None) -> list[tuple[int, str]]:
    """(seed, checkpoint relative to the run) to score: every seed of a ``--seeds`` run, or ``seed`` alone."""
    record = runs.read_config(run_dir)
    seeds = list(record["data"].get("seeds") or [int(record["config"]["seed"])])
    if seed is None:
        chosen = seeds
    elif seed in seeds:
        chosen = [seed]
    else:
        raise DataError(f"{option('seed', seed)}: the run {run_dir} trained seed(s) {', '.join(map(str, seeds))}")
    if len(seeds) == 1:
        return [(chosen[0], runs.BEST)]
    return [(s, f"seeds/seed-{s}/{runs.BEST}") for s in chosen]


def storage_only(differences: Sequence[str]) -> bool:
    """Whether the extraction differences are int8 storage alone (see the module doc)."""
    return bool(differences) and all(d.startswith(_STORAGE) for d in differences)


def int8_note(record: dict[str, Any], shards: ShardSet) -> str | None:
    """The note for a cache stored in another dtype than the run's (int8 read back), else None."""
    trained = record["data"]["extraction"]["tokens"].get("dtype")
    stored = shards.manifest.layout.dtype
    if trained == stored:
        return None
    return (
        f"tokens stored as {stored} (the run trained on {trained}) are read back as floats: figures agree with the "
        "run's own cache within int8 rounding"
    )
