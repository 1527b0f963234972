"""Which probe configurations can train together in one stack (``stacked_run.py``): the same shape (probe, structure,
data, schedule length), differing only in the members' own settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from step_cache.training.config import TrainConfig, full_options, setting_names

# A member's own settings; every other TrainConfig field, and every probe option but dropout, must be shared.
# ``seed`` seeds a member's initial weights; the batches and a held-out validation split come from the first
# member's seed, so members of different seeds (``train-probe --seeds``) see the same data.
MEMBER_FIELDS = setting_names(member=True)  # lr, weight_decay, warmup_epochs, label_smoothing, clip_grad, seed
MEMBER_PROBE_OPTIONS = ("dropout",)
_IGNORED_FIELDS = ("progress",)


def shape_key(config: TrainConfig) -> tuple:
    """What members of one stack must share: probe, structure, data and schedule length."""
    shared = tuple(
        (f.name, getattr(config, f.name))
        for f in dataclasses.fields(TrainConfig)
        if f.name not in (*MEMBER_FIELDS, "probe_options", *_IGNORED_FIELDS)
    )
    options = tuple(sorted((k, v) for k, v in full_options(config).items() if k not in MEMBER_PROBE_OPTIONS))
    return (*shared, ("probe_options", options))


def group_by_shape(configs: Sequence[TrainConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped by ``shape_key``, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(shape_key(config), []).append(index)
    return list(groups.values())
