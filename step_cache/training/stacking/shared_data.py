"""The data a group of stacked probes trains on: splits, pairs and a token source, made once per sweep and shared
by every group that can use it (the tokens are read into memory once, not once per trial)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from step_cache.cache.shards import ShardSet
from step_cache.training.config import TrainConfig
from step_cache.training.data_source import open_token_source
from step_cache.training.run_data import RunInputs, run_inputs
from step_cache.training.splits import HOLDOUT_GROUPS
from step_cache.training.token_data import TokenSource
from step_cache.training.view_table import clean_rows


@dataclass
class TrainingData(RunInputs):
    """A run's inputs (``run_data.run_inputs``, as a one-seed run sets them up) and the token source it reads."""

    source: TokenSource


class DataCache:
    """``TrainingData`` per config, reusing token sources (per token subset, data path and whether augmented views
    are read) across calls. ``holdout``: the val hold-out rule of every config (``splits.HOLDOUT_RULES``)."""

    def __init__(self, shards: ShardSet, holdout: str = HOLDOUT_GROUPS) -> None:
        self.shards, self.holdout = shards, holdout
        self._sources: dict[tuple, TokenSource] = {}

    def get(self, config: TrainConfig) -> TrainingData:
        shards = self.shards
        inputs = run_inputs(shards, config, self.holdout)
        selection, views, device = inputs.selection, inputs.views, inputs.device
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
                device=device,
            )
        given = {f.name: getattr(inputs, f.name) for f in fields(RunInputs)}
        return TrainingData(**given, source=self._sources[key])

    def close(self) -> None:
        """Release the token sources (streaming reader processes); a later ``get`` opens them again."""
        for source in self._sources.values():
            source.close()
        self._sources.clear()
