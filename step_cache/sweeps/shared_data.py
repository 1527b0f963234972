"""The data a group of stacked probes trains on: splits, pairs and a token source, made once per sweep and shared
by every group that can use it (the tokens are read into memory once, not once per trial)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from step_cache.cache.shards import ShardSet
from step_cache.devices import resolve_device
from step_cache.training.config import TrainConfig
from step_cache.training.metrics import pair_indices
from step_cache.training.run_data import check_splits, resolve_pairs, token_subset
from step_cache.training.splits import Splits, select_splits
from step_cache.training.token_data import TokenSelection, TokenSource, open_token_source, select_tokens


@dataclass
class TrainingData:
    """Everything a run reads, as ``training._Run`` sets it up for one config."""

    shards: ShardSet
    selection: TokenSelection
    splits: Splits
    pairs: list[tuple[int, int]]
    source: TokenSource
    device: torch.device


class DataCache:
    """``TrainingData`` per config, reusing token sources (per token subset and data path) and splits (per seed
    and validation fraction) across calls."""

    def __init__(self, shards: ShardSet) -> None:
        self.shards = shards
        self._sources: dict[tuple, TokenSource] = {}

    def get(self, config: TrainConfig) -> TrainingData:
        shards = self.shards
        selection = select_tokens(shards.layout, token_subset(config.tokens, config.probe, shards))
        splits = select_splits(shards.labels, shards.splits, shards.videos, config.val_fraction, config.seed)
        check_splits(splits, shards, config)
        pairs = pair_indices(resolve_pairs(shards, config.pairs), shards.classes)
        device = resolve_device(config.device)
        key = (selection, config.data, config.memory_fraction, config.workers, device.type)
        if key not in self._sources:
            # Every labelled clip: any seed's train / val / test selection is a subset of these.
            labelled = np.nonzero(shards.labels >= 0)[0]
            self._sources[key] = open_token_source(
                shards,
                labelled,
                selection,
                shards.labels,
                mode=config.data,
                memory_fraction=config.memory_fraction,
                workers=config.workers,
                pin_memory=device.type == "cuda",
                progress=config.progress,
            )
        return TrainingData(shards, selection, splits, pairs, self._sources[key], device)

    def close(self) -> None:
        """Release the token sources (streaming reader processes); a later ``get`` opens them again."""
        for source in self._sources.values():
            source.close()
        self._sources.clear()
