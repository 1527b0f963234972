"""What a training run trains on, set up once (``run_inputs``) for ``train_probe``, multi-seed runs and the stacked
sweeps: the token subset, the device, the mirrored pairs, the splits (checked to train and validate), the augmented
views, and the ``data`` part of ``config.json``."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from step_cache.cache.shards import ShardSet
from step_cache.catalog import read_pairs
from step_cache.devices import resolve_device
from step_cache.interface import option
from step_cache.probes import ProbeShape, build_probe
from step_cache.probes.layer_inputs import LayerPick, build_layered_probe
from step_cache.training.config import TrainConfig
from step_cache.training.layer_choice import backbone_depth
from step_cache.training.metrics import pair_indices
from step_cache.training.protocol_use import cache_differences
from step_cache.training.run_record import schedule_record
from step_cache.training.splits import HOLDOUT_GROUPS, DataError, Splits, shard_splits
from step_cache.training.token_data import TokenSelection, select_tokens
from step_cache.training.view_table import ViewTable, clean_rows, view_table

log = logging.getLogger(__name__)


@dataclass
class RunInputs:
    """Everything a run of ``config`` reads but the tokens themselves (``token_data.TokenSource``)."""

    shards: ShardSet
    selection: TokenSelection
    splits: Splits
    pairs: list[tuple[int, int]]
    device: torch.device
    views: ViewTable  # the training clips' augmented views (enabled with views="on" on a cache that has them)


def probe_shape(shards: ShardSet, selection: TokenSelection) -> ProbeShape:
    """The shape arguments of a probe over ``selection`` of the tokens of ``shards``."""
    return ProbeShape(
        dim=selection.probe_dim(shards.layout.dim),  # concatenated layers: their channels side by side
        num_classes=len(shards.classes),
        frames=shards.manifest.frames,
        tokens_per_frame=selection.probe_tokens_per_frame,
        cls_index=selection.cls_index,
    )


def run_inputs(shards: ShardSet, config: TrainConfig, holdout: str = HOLDOUT_GROUPS) -> RunInputs:
    """The one set-up of a run's data, shared by one seed (``trainer``), ``--seeds`` and sweeps (``stacking``).
    ``holdout``: the val hold-out rule (a resumed run keeps its own, ``run_record.recorded_holdout``)."""
    # a cache without a layer axis also takes its own block index: the backbone's depth tells which that is
    numeric = shards.layout.layers is None and config.layers.strip().lstrip("-").isdigit()
    depth = backbone_depth(shards.manifest.extraction) if numeric else None
    selection = select_tokens(shards.layout, token_subset(config, shards), config.layers, depth)
    if selection.along_tokens and config.token_drop > 0:  # it drops among one layer's patch tokens only
        raise DataError(
            f"{option('layers', config.layers)} (the layers' tokens one after the other) with {option('token_drop')}: "
            "refused, as it would drop among the first layer's tokens only; use concat:, mix or one layer with it"
        )
    device = resolve_device(config.device)
    pairs = pair_indices(resolve_pairs(shards, config.pairs), shards.classes)
    validate = config.val != "none"
    splits = shard_splits(shards, config.val_fraction, config.seed, pairs, validate=validate, holdout=holdout)
    check_splits(splits, shards, config)
    check_select_metric(config, splits, shards, pairs)
    views = view_table(shards, splits.train, config.views)
    return RunInputs(shards, selection, splits, pairs, device, views)


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
    if config.val == "none":
        if len(splits.test) == 0:
            raise DataError(
                f"{where}: {option('val', 'none')} reports the test split, and the cache has no test clips "
                f"(give a cache with a test split, or validate: {option('val', 'auto')})"
            )
    elif len(splits.val) == 0:
        reason = (
            f"{option('val_fraction')} is 0"
            if config.val_fraction == 0
            else "every class has a single training video, so none can be held out"
        )
        raise DataError(f"{where}: no validation clips: the cache has no 'val' split and {reason}")
    missing = sorted(set(range(len(shards.classes))) - set(shards.labels[splits.train].tolist()))
    if missing:
        log.warning("no training clips for class(es): %s", ", ".join(shards.classes[c] for c in missing))


_warned_short: weakref.WeakSet[ShardSet] = weakref.WeakSet()  # open caches warned about: sweeps set up often


def warn_short_videos(shards: ShardSet, splits: Splits) -> int:
    """Say how many videos the run uses had fewer frames than T (their clips repeat frames, so a probe of frame
    order sees still frames) and where they are listed, once per open cache; returns that count. Called once the
    run is set up (its probe built), so that a refused command prints its one error line alone."""
    used = np.concatenate([splits.train, splits.val, splits.test])
    short = set(shards.videos[used[shards.short[used]]].tolist())
    if short and shards not in _warned_short:
        _warned_short.add(shards)
        total = len(set(shards.videos[used].tolist()))
        where = " ".join(map(str, shards.directories))
        log.warning(
            "%d of the %d videos this run uses had %s, so their clips repeat frames "
            "(step-cache inspect %s lists them)", len(short), total, shards.manifest.too_short, where,
        )  # fmt: skip
    return len(short)


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
            f"{where}: {option('select_metric', 'pair')} needs mirrored class pairs: the cache names none (give "
            f"{option('pairs', 'FILE')})"
        )
    paired = {c for pair in pairs for c in pair}
    if not any(label in paired for label in shards.labels[splits.val].tolist()):
        raise DataError(f"{where}: {option('select_metric', 'pair')}: no validation clip belongs to a paired class")


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
            # the stored blocks read (concatenated along the channels); absent: a cache without a layer axis
            **({"layers": [shards.layout.layers[p] for p in selection.layers]} if selection.layers else {}),
            **({"mix": True} if selection.mix else {}),  # a learned mix of them (probes.layer_inputs)
            **({"along": "tokens"} if selection.along_tokens else {}),  # one after the other (V-JEPA 2)
        },
        "frames": shards.manifest.frames,
        "dim": selection.probe_dim(shards.layout.dim),
        "splits": splits.counts(),
        "holdout": splits.holdout,  # the rule of a val-fraction hold-out (evaluate and --resume reproduce it)
        **views.record(resolved.views),
        "schedule": schedule_record(requested, resolved, len(splits.train)),
        **(
            {
                "protocol": {
                    "name": resolved.protocol,
                    "cache_differences": cache_differences(resolved.protocol, shards.manifest.extraction),
                }
            }
            if resolved.protocol is not None
            else {}
        ),
    }


def build_run_probe(
    name: str, shards: ShardSet, selection: TokenSelection, options: dict[str, Any], pick: int | None = None
) -> torch.nn.Module:
    """Probe ``name`` for ``selection`` of the tokens of ``shards``: over one layer, or several concatenated or mixed
    (``probes.layer_inputs``); ``pick``: a stack member that reads only that one of the selection's layers."""
    if pick is not None:
        probe = build_run_probe(name, shards, replace(selection, layers=(0,)), options)  # over one layer
        return LayerPick(probe, selection.channels, shards.layout.dim, pick)
    shape = {key: value for key, value in probe_shape(shards, selection).items() if key != "dim"}
    if selection.along_tokens:  # more tokens of one width: the probe as it is
        return build_probe(name, dim=shards.layout.dim, **shape, **options)
    return build_layered_probe(
        name, layer_dim=shards.layout.dim, layers=selection.channels, mix=selection.mix, **shape, **options
    )


def token_subset(config: TrainConfig, shards: ShardSet) -> str:
    """The token subset of ``config.tokens``; ``auto``: only the per-frame CLS tokens for the linear probe (all it
    reads: same result, P times less memory and compute) unless it also averages the patch tokens (``avgpool``),
    every token for the others."""
    if config.tokens != "auto":
        return config.tokens
    cls_only = config.probe == "linear" and not (config.probe_options or {}).get("avgpool")
    return "cls" if cls_only and shards.layout.cls_tokens > 0 else "all"
