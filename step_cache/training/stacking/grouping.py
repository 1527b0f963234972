"""Which probe configurations can train together in one stack (``stacked_run.py``): the same shape (probe, structure,
data, schedule length), differing only in the members' own settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from step_cache.cache.layout import TokenLayout
from step_cache.training.config import TrainConfig, full_options, setting_names
from step_cache.training.layer_choice import layer_positions, one_layer, union_spec
from step_cache.training.stacking.nested import NestedPlan, nested_plan, nests

# A member's own settings; every other TrainConfig field, and every probe option but dropout, must be shared.
# ``seed`` seeds a member's initial weights; the batches and a held-out validation split come from the first
# member's seed, so members of different seeds (``train-probe --seeds``) see the same data.
MEMBER_FIELDS = setting_names(member=True)  # lr, weight_decay, warmup_epochs, label_smoothing, clip_grad, seed
MEMBER_PROBE_OPTIONS = ("dropout",)
_IGNORED_FIELDS = ("progress",)
ONE_LAYER = "one layer each"
NESTED = "nested linear inputs"


def shape_key(config: TrainConfig) -> tuple:
    """What members of one stack must share: probe, structure, data and schedule length."""
    shared = tuple(
        (f.name, getattr(config, f.name))
        for f in dataclasses.fields(TrainConfig)
        if f.name not in (*MEMBER_FIELDS, "probe_options", "layers", *_IGNORED_FIELDS)
    )
    # runs of one layer each stack together, reading the union of their layers once per batch (stacked_run); linear
    # runs whose inputs nest (last / concat:lastN, avgpool or not) too, as masked heads of the widest (nested)
    nested = nests(config)
    layers = ("layers", NESTED if nested else ONE_LAYER if one_layer(config.layers) else config.layers)
    own = (*MEMBER_PROBE_OPTIONS, "avgpool") if nested else MEMBER_PROBE_OPTIONS
    options = tuple(sorted((k, v) for k, v in full_options(config).items() if k not in own))
    return (*shared, layers, ("probe_options", options))


def group_by_shape(configs: Sequence[TrainConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped by ``shape_key``, groups in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(shape_key(config), []).append(index)
    return list(groups.values())


def stack_reading(
    members: Sequence[TrainConfig], layout: TokenLayout
) -> tuple[TrainConfig, list[int] | NestedPlan | None]:
    """The config whose data a stack of ``members`` reads, and how its members read it: for members that read one
    layer each but not the same one, each member's position among the layers read (their union side by side: every
    batch is read once for all of them); for linear members whose inputs nest, their ``NestedPlan``; None when they
    read the same input."""
    plan = nested_plan(members)
    if plan is not None:
        return plan.reading, plan
    specs = sorted({member.layers for member in members})
    if len(specs) == 1:
        return members[0], None
    union = union_spec(specs, layout)
    reading = layer_positions(union, layout) or (0,)
    picks = [reading.index((layer_positions(member.layers, layout) or (0,))[0]) for member in members]
    return dataclasses.replace(members[0], layers=union), picks
