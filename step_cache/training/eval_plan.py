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
- Pooled patches (``step-cache compact --pool-patches``): a run that reads the CLS tokens only (the linear probe's
  default) gets the same tokens from the pooled cache and its source, so either is scored; any other run is refused
  with what to pass instead (``pooling_refusal``): the cache it trained on for a run on unpooled patches, or, for a
  run trained on a pooled compact, the compact command that gives this cache its kind of tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from step_cache.cache.shards import ShardSet
from step_cache.interface import from_command_line, option
from step_cache.training import runs
from step_cache.training.splits import DataError, Splits

log = logging.getLogger(__name__)

EVAL_SPLITS = ("all", "train", "val", "test")
# Extraction settings that int8 storage changes (the values are the same tokens, quantized per token).
_STORAGE = ("tokens.dtype", "tokens.scale_dtype", "tokens.dequantized_from")
# Extraction settings that pooling the patch grid after storage changes (the CLS tokens stay as stored).
_POOLING = ("tokens.grid", "tokens.patch_pool", "tokens.pooled_after_storage", "tokens.tokens_per_frame")


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


def pooling_only(differences: Sequence[str]) -> bool:
    """Whether the extraction differences are patch pooling (and int8 storage) alone."""
    return any(d.startswith(_POOLING) for d in differences) and all(
        d.startswith(_POOLING + _STORAGE) for d in differences
    )


def pooling_refusal(record: dict[str, Any], shards: ShardSet, differences: Sequence[str]) -> str | None:
    """None when the run can score ``shards`` despite ``differences`` (pooling alone, CLS tokens only read); else,
    for pooling differences, the one-line refusal that says what to pass; None for other differences too (the
    caller's general refusal names them)."""
    if not pooling_only(differences) or record["data"]["tokens"]["subset"] == "cls":
        return None
    where = ", ".join(map(str, shards.directories))
    trained = record["data"]["extraction"]["tokens"]
    stored = shards.manifest.extraction["tokens"]
    run_pool, cache_pool = int(trained.get("patch_pool", 1)), int(stored.get("patch_pool", 1))
    if run_pool < cache_pool or stored.get("pooled_after_storage"):
        source = shards.manifest.source.get("compacted_from")
        own = record["data"].get("features") or []
        return (
            f"{where}: its patches are pooled {cache_pool}x{cache_pool} (step-cache compact"
            f"{' of ' + source if source else ''}), the run trained on patches pooled {run_pool}x{run_pool}: "
            f"evaluate the run on the cache it was trained on ({', '.join(own)}) or another with its patches, or "
            f"train a run on {where}"
        )
    factor = run_pool // cache_pool
    if run_pool % cache_pool or int(trained["pooled_after_storage"]["patch_pool"]) != cache_pool:
        return None
    dtype = trained.get("dtype")
    if from_command_line():
        how = f"step-cache compact {where} OUT --pool-patches {factor}" + (
            f" --dtype {dtype}" if dtype != stored.get("dtype") else ""
        )
    else:
        how = f"step_cache.cache.compact.compact({where!r}, OUT, pool_patches={factor}" + (
            f", dtype={dtype!r})" if dtype != stored.get("dtype") else ")"
        )
    return (
        f"{where}: the run was trained on patches pooled {run_pool}x{run_pool} after storage (a compact of its "
        f"cache), this cache's are {cache_pool}x{cache_pool}: compact it the same way first ({how}), then evaluate "
        "on OUT"
    )
