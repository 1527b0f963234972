"""Linear members whose inputs nest, trained as one stack that reads each batch once (``probes.nested_linear``).

DINOv2's linear grid (``sweep --protocol dinov2-linear``: 13 lrs x ``layers`` last / ``concat:last4`` x
``avgpool``) has four head widths, D, 2D, 4D and 5D; every one reads a subset of the widest input
``[cls_-4, ..., cls_-1, patchmean_-1]``. Linear members without LayerNorm (with it the widths do not nest: a
LayerNorm over 5D columns is not one over D of them) that read ``last`` or ``concat:lastN`` of one cache and differ
in those and in ``avgpool`` are built as ``NestedLinear`` heads of the widest width with a per-member column mask,
each initialised with the weights its own narrow probe gets from its seed: a member trains as the same config alone,
up to the order of float sums (tested). The stack reads the class tokens of the deepest member's N layers, and every
token of the last one where some member uses ``avgpool`` (``nested_tokens``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from step_cache.probes import count_parameters
from step_cache.probes.layer_inputs import build_layered_probe
from step_cache.probes.nested_linear import NestedLinear
from step_cache.training.augment import build_augmentation
from step_cache.training.config import TrainConfig, full_options
from step_cache.training.layer_choice import CONCAT, LAST
from step_cache.training.run_data import build_run_probe, token_subset
from step_cache.training.stacking.members import StackedProbes
from step_cache.training.stacking.nested_tokens import NestedTokens
from step_cache.training.token_data import TokenSelection, select_tokens

if TYPE_CHECKING:
    from step_cache.training.stacking.shared_data import DataCache, TrainingData


def last_blocks(spec: str) -> int | None:
    """N for a ``layers`` spec that reads the last N stored layers side by side (``last``: 1, ``concat:lastN``);
    None for any other spec."""
    text = str(spec).replace(" ", "").lower()
    if text == LAST:
        return 1
    count = text.removeprefix(CONCAT + "last")
    return int(count) if text.startswith(CONCAT + "last") and count.isdigit() and int(count) >= 1 else None


def nests(config: TrainConfig) -> bool:
    """Whether ``config``'s input is a subset of the widest nested linear input: a linear probe without LayerNorm
    that reads ``last`` or ``concat:lastN``."""
    linear = config.probe == "linear" and not full_options(config)["layer_norm"]
    return linear and last_blocks(config.layers) is not None


@dataclass(frozen=True)
class NestedPlan:
    """How a stack of nesting members reads and builds: ``reading`` the config whose data it reads, ``blocks`` the
    N of its widest ``concat:lastN``, ``patches`` whether some member averages patch tokens, ``kinds`` each
    member's (N, avgpool)."""

    reading: TrainConfig
    blocks: int
    patches: bool
    kinds: tuple[tuple[int, bool], ...]

    @property
    def merged(self) -> bool:
        """Whether the stack reads the class tokens of its N > 1 layers and every token of the last one only
        (``nested_tokens``), because a member averages the last layer's patch tokens."""
        return self.patches and self.blocks > 1


def nested_plan(members: Sequence[TrainConfig]) -> NestedPlan | None:
    """The plan of a stack of ``members`` (one ``grouping.shape_key``) when they nest and do not all read the same
    input; None otherwise (they stack as they are)."""
    if not all(nests(member) for member in members):
        return None
    kinds = tuple((last_blocks(m.layers) or 1, bool(full_options(m)["avgpool"])) for m in members)
    if len(set(kinds)) == 1:
        return None
    blocks, patches = max(n for n, _ in kinds), any(avgpool for _, avgpool in kinds)
    spec = LAST if blocks == 1 else f"{CONCAT}last{blocks}"
    # avgpool on the reading config makes --tokens auto read every token (token_subset); CLS only otherwise
    options = {**members[0].probe_options, "avgpool": patches}
    return NestedPlan(dataclasses.replace(members[0], layers=spec, probe_options=options), blocks, patches, kinds)


class NestedProbes(StackedProbes):
    """Stacked ``NestedLinear`` members whose ``member_state_dict`` is what the member's own narrow probe holds
    (its columns of the head), so its checkpoint loads as that config's probe."""

    def __init__(self, probes: Sequence[NestedLinear]) -> None:
        super().__init__(probes)
        self.layer_dim, self.patches = probes[0].layer_dim, probes[0].patches

    def member_state_dict(self, member: int, stacked: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        wide = super().member_state_dict(member, stacked)
        mask = self.buffers["mask"][member].cpu()
        columns = torch.nonzero(mask).squeeze(-1)
        avgpool = self.patches and bool(mask[-1])
        # Dinov2LinearInput wraps the probe (keys "probe.head.*") for avgpool on several layers
        prefix = "probe." if avgpool and len(columns) // self.layer_dim - 1 > 1 else ""
        weight = wide["head.weight"][:, columns].clone()
        return {f"{prefix}head.weight": weight, f"{prefix}head.bias": wide["head.bias"]}


def nested_members(
    plan: NestedPlan, configs: Sequence[TrainConfig], data: TrainingData
) -> tuple[NestedProbes, list[int], list[int]]:
    """The stacked members of ``plan`` for ``configs`` (with full options), each with the head its narrow probe
    gets from ``manual_seed(seed)`` in its columns; and each member's parameter counts (with and without the
    head) as its narrow probe has them."""
    shards, selection = data.shards, data.selection
    dim, blocks = shards.layout.dim, plan.blocks
    shape = {"num_classes": len(shards.classes), "frames": shards.manifest.frames,
             "tokens_per_frame": selection.probe_tokens_per_frame, "cls_index": selection.cls_index}  # fmt: skip
    leading = data.source.blocks - 1 if isinstance(data.source, NestedTokens) else 0  # the merged read's layout
    probes, counts = [], []
    for config, (n, avgpool) in zip(configs, plan.kinds, strict=True):
        # the stack may read patch tokens this member alone does not: its augmentation is refused as alone
        own = select_tokens(shards.layout, token_subset(config, shards), config.layers)
        build_augmentation(config.token_drop, config.reverse_pairs, data.pairs, len(shards.classes), own)
        torch.manual_seed(config.seed)  # what train_probe does before building its probe
        narrow = build_layered_probe(config.probe, layer_dim=dim, layers=n, mix=False, **shape, **config.probe_options)
        columns = list(range((blocks - n) * dim, blocks * dim)) + (
            list(range(blocks * dim, (blocks + 1) * dim)) if avgpool else []
        )
        mask = torch.zeros((blocks + plan.patches) * dim)
        mask[columns] = 1.0
        kept = {key: shape[key] for key in ("num_classes", "tokens_per_frame", "cls_index")}
        wide = NestedLinear(layer_dim=dim, layers=blocks, patches=plan.patches, mask=mask, leading=leading, **kept,
                            dropout=config.probe_options["dropout"])  # fmt: skip
        with torch.no_grad():
            wide.head.weight[:, columns] = narrow.head.weight
            wide.head.bias.copy_(narrow.head.bias)
        probes.append(wide.to(data.device))
        counts.append((count_parameters(narrow), count_parameters(narrow, exclude_head=True)))
    return NestedProbes(probes), [c for c, _ in counts], [c for _, c in counts]


def stack_members(
    configs: Sequence[TrainConfig], data: TrainingData, reading: Sequence[int] | NestedPlan | None
) -> tuple[StackedProbes, list[int], list[int]]:
    """The stacked members of ``configs`` (full options) and each one's parameter counts (with and without the
    head): ``NestedLinear`` heads for a ``NestedPlan``, else each config's own probe, which with ``reading``, the
    position of the one layer each member reads among the layers read (``grouping.stack_reading``), sits behind a
    ``LayerPick``."""
    if isinstance(reading, NestedPlan):
        return nested_members(reading, configs, data)
    probes = []
    for member, config in enumerate(configs):
        torch.manual_seed(config.seed)  # what train_probe does before building its probe
        pick = None if reading is None else reading[member]
        probe = build_run_probe(config.probe, data.shards, data.selection, config.probe_options, pick)
        probes.append(probe.to(data.device))
    total, without_head = count_parameters(probes[0]), count_parameters(probes[0], exclude_head=True)
    return StackedProbes(probes), [total] * len(configs), [without_head] * len(configs)


def nested_data(cache: DataCache, plan: NestedPlan) -> TrainingData:
    """The data a stack of ``plan`` trains on, from ``cache``: with ``avgpool`` members over N > 1 layers, the class
    tokens of the N layers and every token of the last merged (``NestedTokens``); else ``plan.reading`` as it is."""
    # no CLS, or tokens='cls' / 'patches': the avgpool members refuse the read as they do alone (NestedLinear)
    if not plan.merged or cache.shards.layout.cls_tokens == 0 or token_subset(plan.reading, cache.shards) != "all":
        return cache.get(plan.reading)
    options = {**plan.reading.probe_options, "avgpool": False}
    classes = cache.get(dataclasses.replace(plan.reading, tokens="cls", probe_options=options))
    last = cache.get(dataclasses.replace(plan.reading, layers=LAST, tokens="all"))
    lead = plan.blocks - 1
    chosen = last.selection
    # the earlier layers' class tokens lead each frame; they count as CLS tokens (kept by --token-drop)
    selection = TokenSelection(
        chosen.subset, chosen.start, chosen.stop + lead, chosen.cls_index, chosen.cls_tokens + lead, chosen.layers
    )
    return dataclasses.replace(last, selection=selection, source=NestedTokens(classes, last, plan.blocks))
