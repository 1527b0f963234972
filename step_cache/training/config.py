"""``TrainConfig``: the hyperparameters of a probe training run, each declared once with its default and its
``Setting`` (help, bounds, which commands offer it, how sweeps, stacks and ``--resume`` treat it), and their checks.
Without torch, so the command line can build its options from it quickly; the record a run writes to
``config.json`` is ``run_record.py``'s."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, get_args, get_type_hints

from step_cache.errors import StepCacheError
from step_cache.training.early_stopping import MIN_PATIENCE, PATIENCE_SHARE, resolve_patience
from step_cache.training.records import SELECT_METRICS
from step_cache.training.schedule import (
    AUTO_BATCH_RANGE,
    AUTO_BATCHES_PER_EPOCH,
    AUTO_MIN_EPOCHS,
    AUTO_MIN_STEPS,
    resolve_schedule,
)

# Peak learning rate when none is given, per probe (the others: FALLBACK_LR); measured in docs/training.md, "Default
# schedule".
DEFAULT_LR = {"linear": 1e-2}
FALLBACK_LR = 1e-3


def default_lr(probe: str) -> float:
    return DEFAULT_LR.get(probe, FALLBACK_LR)


class TrainConfigError(StepCacheError, ValueError):
    """A training option that is unknown or out of range."""


@dataclass(frozen=True)
class Setting:
    """What a ``TrainConfig`` field means to its users, declared once beside its default: the help of its command-line
    option and the option's bounds, the commands that offer it, and how sweeps, stacks and ``--resume`` treat it.
    The train-probe and sweep options (``cli/options.py``), the sweep space (``sweeps/space.py``), the stack grouping
    (``stacking/grouping.py``) and ``EXECUTION_FIELDS`` are derived from these."""

    help: str
    flags: tuple[str, ...] = ()  # the option's spellings, when not --field-name
    min: float | None = None  # the option's bounds (make_config checks the Python API's values)
    max: float | None = None
    commands: tuple[str, ...] = ("train-probe", "sweep")  # the commands with an option for it
    searchable: bool = False  # a sweep may search it (--param NAME=SPEC)
    member: bool = False  # each member of a stack has its own (the others must be shared: stacking/grouping.py)
    execution: bool = False  # changes only how fast a run goes (on CPU never its figures): --resume may change it


def setting(default: Any, help: str, **meta: Any) -> Any:
    """A ``TrainConfig`` field: its default and its ``Setting``."""
    return field(default=default, metadata={"setting": Setting(help, **meta)})


TRAIN_ONLY = ("train-probe",)
NO_OPTION: tuple[str, ...] = ()
# The flags the settings of one kind share: a stack member's own hyperparameters, and the token-space augmentations.
MEMBER_OWN: dict[str, Any] = {"commands": TRAIN_ONLY, "searchable": True, "member": True}
AUGMENTATION: dict[str, Any] = {"commands": TRAIN_ONLY, "searchable": True}
_LR_HELP = ", ".join(f"{lr:g} for {probe}" for probe, lr in DEFAULT_LR.items())


@dataclass
class TrainConfig:
    """Everything that defines a training run. Fields whose ``Setting`` is ``execution`` only change how fast it runs
    (on CPU the metrics do not depend on them), so ``--resume`` may change them; the others must match."""

    probe: str = setting("step", "linear, attentive, self-attentive or step.")
    # e.g. dropout, num_heads, frame_pos, mlp, depth: the probe's own options (cli/train.py has their flags)
    probe_options: dict[str, Any] = field(default_factory=dict)
    # None: chosen from the number of training clips (schedule.resolve_schedule); a run records the values used.
    epochs: int | None = setting(
        None,
        f"Training epochs (default: auto, at least {AUTO_MIN_EPOCHS} and enough for {AUTO_MIN_STEPS} optimizer steps; "
        "docs/training.md).",
        min=1,
    )
    batch_size: int | None = setting(
        None,
        f"Clips per optimizer step (default: auto, about {AUTO_BATCHES_PER_EPOCH} batches per epoch, a power of two "
        f"in {AUTO_BATCH_RANGE[0]}-{AUTO_BATCH_RANGE[1]}).",
        min=1,
        searchable=True,
    )
    lr: float | None = setting(
        None,
        f"Peak learning rate (AdamW); default {_LR_HELP}, {FALLBACK_LR:g} for the others.",
        **MEMBER_OWN,
    )
    weight_decay: float = setting(
        0.05,
        "On weight matrices only (not norms, biases, tokens).",
        flags=("--weight-decay", "--wd"),
        **MEMBER_OWN,
    )
    warmup_epochs: float = setting(1.0, "Linear warm-up (per step), then cosine decay to 0.", **MEMBER_OWN)
    label_smoothing: float = setting(0.0, "Label smoothing of the cross-entropy, in [0, 1).", **MEMBER_OWN)
    clip_grad: float = setting(1.0, "Max gradient norm; 0 disables clipping.", **MEMBER_OWN)
    token_drop: float = setting(
        0.0,
        "Training augmentation: drop this share of each frame's patch tokens per clip and epoch (CLS tokens stay; "
        "augment.py). Not for the linear probe, which reads CLS only.",
        min=0.0,
        max=0.99,
        **AUGMENTATION,
    )
    reverse_pairs: float = setting(
        0.0,
        "Training augmentation for exact mirrored pairs only: with this probability play a clip of a paired class "
        "backwards and label it as its partner (off by default: real near-mirror actions are not exact reverses).",
        min=0.0,
        max=1.0,
        **AUGMENTATION,
    )
    views: str = setting(
        "on",
        "on: each epoch, every training clip contributes one of its cached views, drawn uniformly from the clean one "
        "and its augmented ones (extract --views N; the views are held in memory too: (1 + N) x the training clips' "
        "tokens); off: clean clips only, to measure the gain. A no-op on a cache without views. Validation, test, "
        "evaluate and predict always use the clean views.",
        searchable=True,
    )
    order: str = setting(
        "random",
        "Epoch order: random (every clip anywhere in the cache) or runs (runs of consecutive clips, shuffled, then "
        "mixed in a buffer of 8 batches: long sequential reads for a cache streamed from disk; docs/training.md).",
    )
    # Early stopping (training/early_stopping.py); patience None is resolved with the schedule.
    early_stop: bool = setting(
        True,
        "Stop a run (each seed, each trial) once its validation score (what picks best.pt: val top-1 or the "
        "--select-metric, then val loss) has not improved for --patience epochs after the warm-up; the schedule "
        "stays the planned one (docs/training.md, Early stopping).",
    )
    patience: int | None = setting(
        None,
        "Early stopping: epochs without a better validation score before a run stops (default: "
        f"max({MIN_PATIENCE}, {PATIENCE_SHARE:.0%} of the planned epochs)).",
        min=1,
    )
    # records.SELECT_METRICS; every member of a stack shares it (a sweep's --metric ranks trials, not checkpoints).
    select_metric: str = setting(
        "top1",
        "The validation metric that picks best.pt and drives early stopping (ties: lower val loss): top1, mean-class "
        "(mean of per-class accuracies, for imbalanced sets such as Drive&Act) or pair (mirrored pairs' accuracy). "
        "Recorded in config.json and metrics.json.",
    )
    seed: int = setting(
        0, "Seed of the initial weights, batch order and held-out val videos (and of a sweep's sampler).", member=True
    )
    seeds: int = setting(
        1,
        "Train seeds SEED..SEED+N-1 together as one stacked batch and report mean ± std (same batches and splits; the "
        "seeds differ in initial weights and dropout; training/stacking/seeds.py).",
        min=1,
        commands=TRAIN_ONLY,
    )
    val_fraction: float = setting(
        0.2, "Share of training videos held out (stratified) when the cache has no val split."
    )
    tokens: str = setting(
        "auto",
        "Tokens the probe sees per frame: all, cls, patches, or auto (cls for linear, else all).",
        searchable=True,
    )
    pairs: str | None = setting(None, "Mirrored class pairs file 'a,b' per line (default: the cache's pairs).")
    amp: bool = setting(True, "bf16 autocast on CUDA (ignored on CPU).")
    device: str = setting("auto", "auto, cpu or cuda[:N].", execution=True)
    data: str = setting(
        "auto",
        "auto (in memory when it fits; on a GPU, there when it fits), memory (load all tokens into RAM), "
        "streaming (HDF5) or device (all tokens on the compute device).",
        execution=True,
    )
    memory_fraction: float = setting(
        0.5, "data=auto loads into RAM below this share of available memory.", execution=True
    )
    workers: int | None = setting(
        None,
        "Streaming reader processes (default: spare threads of the CPU budget, at most 4; on CUDA all but 2).",
        min=0,
        execution=True,
    )
    eval_batch_size: int | None = setting(None, "Default: 4 x batch_size.", commands=NO_OPTION, execution=True)
    progress: bool = setting(True, "Progress bars (the CLI's --quiet).", commands=NO_OPTION, execution=True)


def settings() -> dict[str, Setting]:
    """Each ``TrainConfig`` field that has a ``Setting``, in field order."""
    return {f.name: f.metadata["setting"] for f in fields(TrainConfig) if "setting" in f.metadata}


def setting_names(**wanted: bool) -> tuple[str, ...]:
    """The fields whose ``Setting`` has every flag in ``wanted`` as given, e.g. ``setting_names(searchable=True)``."""
    return tuple(name for name, meta in settings().items() if all(getattr(meta, k) == v for k, v in wanted.items()))


def value_type(name: str) -> type:
    """The type of field ``name``'s values, without the ``None`` that stands for "chosen automatically"."""
    kinds = [kind for kind in get_args(_HINTS[name]) or (_HINTS[name],) if kind is not type(None)]
    return kinds[0]


_HINTS = get_type_hints(TrainConfig)
EXECUTION_FIELDS = setting_names(execution=True)
# What may differ where the same run is repeated (resumed, retrained, another sweep worker): the execution-only
# fields and the pairs *file*, which may move (the pairs it resolves to are compared separately).
LOCAL_FIELDS = (*EXECUTION_FIELDS, "pairs")


def make_config(probe: str, options: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TrainConfigError(
            f"unknown training option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}"
        )
    # Imported here, not at the top: the command line builds its options from this module, and `--help` should
    # not wait for torch, which these modules load.
    from step_cache.training.epoch_order import EPOCH_ORDERS
    from step_cache.training.token_data import DATA_MODES, TOKEN_SUBSETS
    from step_cache.training.view_table import VIEW_MODES

    config = TrainConfig(probe=probe, **options)
    if config.lr is None:
        config.lr = default_lr(probe)
    if isinstance(config.views, bool):  # the Python API may say views=True / False
        config.views = "on" if config.views else "off"
    checks = [
        (config.epochs is None or config.epochs >= 1, f"epochs must be >= 1, got {config.epochs}"),
        (config.batch_size is None or config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}"),
        (0 < config.lr < math.inf, f"lr must be a finite number > 0, got {config.lr}"),
        (config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}"),
        (config.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {config.warmup_epochs}"),
        (config.seeds >= 1, f"seeds must be >= 1, got {config.seeds}"),
        (config.patience is None or config.patience >= 1, f"patience must be >= 1, got {config.patience}"),
        (
            config.early_stop or config.patience is None,
            "patience goes with early stopping: drop --no-early-stop (early_stop=False) or --patience",
        ),
        (
            config.select_metric in SELECT_METRICS,
            f"select_metric must be one of {', '.join(SELECT_METRICS)}, got {config.select_metric!r}",
        ),
        (0 <= config.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {config.label_smoothing}"),
        (config.clip_grad >= 0, f"clip_grad must be >= 0 (0 = off), got {config.clip_grad}"),
        (0 <= config.token_drop < 1, f"token_drop must be in [0, 1), got {config.token_drop}"),
        (0 <= config.reverse_pairs <= 1, f"reverse_pairs must be in [0, 1], got {config.reverse_pairs}"),
        (config.order in EPOCH_ORDERS, f"order must be one of {', '.join(EPOCH_ORDERS)}, got {config.order!r}"),
        (config.views in VIEW_MODES, f"views must be one of {', '.join(VIEW_MODES)}, got {config.views!r}"),
        (0 <= config.val_fraction < 1, f"val_fraction must be in [0, 1), got {config.val_fraction}"),
        (
            config.tokens in ("auto", *TOKEN_SUBSETS),
            f"tokens must be one of auto, {', '.join(TOKEN_SUBSETS)}, got {config.tokens!r}",
        ),
        (config.data in DATA_MODES, f"data must be one of {', '.join(DATA_MODES)}, got {config.data!r}"),
        (0 < config.memory_fraction <= 1, f"memory_fraction must be in (0, 1], got {config.memory_fraction}"),
        (config.workers is None or config.workers >= 0, f"workers must be >= 0, got {config.workers}"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainConfigError(message)
    if config.pairs is not None:
        config.pairs = str(config.pairs)
    return config


def full_options(config: TrainConfig) -> dict[str, Any]:
    """The probe's options as it is built: its defaults (``probes.probe_options``), then the config's own."""
    from step_cache.probes import probe_options  # here, not at the top: torch (see make_config)

    return {**probe_options(config.probe), **config.probe_options}


def with_schedule(config: TrainConfig, train_clips: int) -> TrainConfig:
    """``config`` with ``epochs`` and ``batch_size`` resolved for ``train_clips`` training clips (see
    ``schedule.resolve_schedule``), and the early-stopping patience for those epochs; the values given stay."""
    epochs, batch_size = resolve_schedule(config.epochs, config.batch_size, train_clips)
    patience = resolve_patience(config.early_stop, config.patience, epochs)
    return replace(config, epochs=epochs, batch_size=batch_size, patience=patience)
