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
from step_cache.training.run_data import check_select_metric, check_splits, resolve_pairs, token_subset
from step_cache.training.splits import Splits, shard_splits
from step_cache.training.token_data import TokenSelection, TokenSource, open_token_source, select_tokens
from step_cache.training.views import ViewTable, clean_rows, view_table


@dataclass
class TrainingData:
    """Everything a run reads, as ``training._Run`` sets it up for one config."""

    shards: ShardSet
    selection: TokenSelection
    splits: Splits
    pairs: list[tuple[int, int]]
    source: TokenSource
    device: torch.device
    views: ViewTable  # the training clips' augmented views (enabled with views="on" on a cache that has them)


class DataCache:
    """``TrainingData`` per config, reusing token sources (per token subset, data path and whether augmented views
    are read) across calls."""

    def __init__(self, shards: ShardSet) -> None:
        self.shards = shards
        self._sources: dict[tuple, TokenSource] = {}

    def get(self, config: TrainConfig) -> TrainingData:
        shards = self.shards
        selection = select_tokens(shards.layout, token_subset(config, shards))
        splits = shard_splits(shards, config.val_fraction, config.seed)
        check_splits(splits, shards, config)
        views = view_table(shards, splits.train, config.views)
        pairs = pair_indices(resolve_pairs(shards, config.pairs), shards.classes)
        check_select_metric(config, splits, shards, pairs)
        device = resolve_device(config.device)
        key = (selection, config.data, config.memory_fraction, config.workers, device.type)
        # A source that holds the views holds the clean clips too: a run without views may share it.
        key = (*key, views.enabled or (*key, True) in self._sources)
        if key not in self._sources:
            # Every labelled clip (and with views, every labelled view): any seed's train / val / test selection,
            # and the views of its training clips, are a subset of these.
            wanted = shards.labels >= 0
            labelled = np.nonzero(wanted if views.enabled else wanted & clean_rows(shards))[0]
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
        return TrainingData(shards, selection, splits, pairs, self._sources[key], device, views)

    def close(self) -> None:
        """Release the token sources (streaming reader processes); a later ``get`` opens them again."""
        for source in self._sources.values():
            source.close()
        self._sources.clear()
