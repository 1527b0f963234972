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
from step_cache.training.protocol_use import apply_protocol, protocol_probe
from step_cache.training.records import SELECT_METRICS
from step_cache.training.schedule import (
    AUTO_BATCH_RANGE,
    AUTO_BATCHES_PER_EPOCH,
    AUTO_MIN_EPOCHS,
    AUTO_MIN_STEPS,
    resolve_schedule,
)
from step_cache.training.setting import AUGMENTATION, MEMBER_OWN, NO_OPTION, TRAIN_ONLY, Setting, setting

# Peak learning rate when none is given, per probe (the others: FALLBACK_LR); measured in docs/training.md, "Default
# schedule".
DEFAULT_LR = {"linear": 1e-2}
FALLBACK_LR = 1e-3


# TrainConfig.vary: what differs between the seeds of --seeds (training/seed_data.py for "data")
VARY_MODES = ("init", "data")
# TrainConfig.optimizer: optimization.build_optimizer builds them for one probe, stacking for a stack.
OPTIMIZERS = ("adamw", "sgd")
# TrainConfig.val: "auto" validates (the cache's val split, else a hold-out), "none" trains without validation.
VAL_MODES = ("auto", "none")


def default_lr(probe: str) -> float:
    return DEFAULT_LR.get(probe, FALLBACK_LR)


class TrainConfigError(StepCacheError, ValueError):
    """A training option that is unknown or out of range."""


_LR_HELP = ", ".join(f"{lr:g} for {probe}" for probe, lr in DEFAULT_LR.items())


@dataclass
class TrainConfig:
    """Everything that defines a training run. Fields whose ``Setting`` is ``execution`` only change how fast it runs
    (on CPU the metrics do not depend on them), so ``--resume`` may change them; the others must match."""

    probe: str = setting("step", "linear, attentive, self-attentive or step (default: step, or the --protocol's).")
    # protocols.PROTOCOLS; applied by make_config beneath the options given (protocol_use.apply_protocol)
    protocol: str | None = setting(
        None,
        "An anchor's frozen evaluation: dinov2-linear, vjepa-attentive or vjepa2-attentive (docs/protocols.md). It "
        "sets the probe and every training field that anchor publishes (optimizer, schedule, epochs, batch, "
        "precision, ...; sweep --protocol: its grid as one stack), checks the cache's extraction against it and "
        "prints what differs. Default: none. Options given explicitly override the preset.",
    )
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
        f"Peak learning rate (of --optimizer); default {_LR_HELP}, {FALLBACK_LR:g} for the others.",
        **MEMBER_OWN,
    )
    # OPTIMIZERS; shared by the members of a stack (stacking/grouping.py), so an lr grid of either trains as one stack.
    optimizer: str = setting(
        "adamw",
        "adamw (decoupled weight decay) or sgd (momentum 0.9, weight decay added to the gradient: DINOv2's linear "
        "evaluation, with --weight-decay 0 and --warmup-epochs 0 there); both decay weight matrices only and follow "
        "the warm-up + cosine schedule.",
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
    order: str = setting("random", "Epoch order: random, or runs (for streamed caches; docs/training.md).")
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
    view_average: str = setting(
        "softmax",
        "How a video's rows (its clips and extract --test-views crops) are combined into its prediction in every "
        "validation and test figure, evaluate and predict: softmax (mean of their softmax probabilities, as V-JEPA's "
        "evaluation) or logits (mean of their logits, step-cache's rule before test views). Recorded in config.json "
        "and metrics.json.",
    )
    seed: int = setting(
        0, "Seed of the initial weights, batch order and held-out val videos (and of a sweep's sampler).", member=True
    )
    seeds: int = setting(
        1,
        "Train seeds SEED..SEED+N-1 and report mean ± std; what differs between them is --vary's.",
        min=1,
        commands=TRAIN_ONLY,
    )
    # VARY_MODES; metrics.json records it and every printed std names it (metrics_file.spread_note)
    vary: str = setting(
        "init",
        "--seeds: init: the seeds differ in initial weights and dropout only (same batches and val hold-out), "
        "trained as one stacked batch; data: batch order and the val hold-out vary with the seed too, each seed "
        "trained as a run of its own (OUT/seeds/seed-S/).",
        commands=TRAIN_ONLY,
    )
    val_fraction: float = setting(
        0.2, "Share of training videos held out (stratified, groups whole) when the cache has no val split."
    )
    # VAL_MODES; "none" is for datasets whose protocol has no val split (UCF101, HMDB51, Diving48 report test only).
    val: str = setting(
        "auto",
        "auto: validate every epoch on the cache's val split, else on --val-fraction of the training videos; none: "
        "no validation (a cache's val clips are not used): a fixed schedule, the last epoch's weights are the "
        "checkpoint, no early stopping; needs a test split. Labelled in metrics.json and the printed line.",
        commands=TRAIN_ONLY,
    )
    tokens: str = setting(
        "auto",
        "Tokens the probe sees per frame: all, cls, patches, or auto (cls for linear, else all).",
        searchable=True,
    )
    layers: str = setting(
        "last",
        "Stored layers the probe reads (a cache of extract --layers): last (default; a cache without layers as it "
        "is), a block index (e.g. 10), or concat:a,b,... / concat:lastN: those blocks' tokens side by side along the "
        "channels (DINOv2's n_last_blocks with the linear probe on CLS tokens), tokens:a,b,... / tokens:lastN: one "
        "after the other along the tokens (V-JEPA 2's out_layers), or mix / mix:a,b,... / mix:lastN: a learned "
        "softmax-weighted sum of them with a learned gain. Only those layers are read.",
        searchable=True,
    )
    pairs: str | None = setting(None, "Mirrored class pairs file 'a,b' per line (default: the cache's pairs).")
    amp: bool = setting(True, "bf16 autocast on CUDA (ignored on CPU).")
    tf32: bool = setting(
        False,
        "TF32 matmuls and convolutions on CUDA for what runs in float32 (all of it with --no-amp); ignored on CPU. "
        "Off by default: float32 then means float32.",
    )
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
        "Streaming reader processes (default: half the CPU budget, at least 2; on CUDA all but 2; memory-bounded).",
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


def make_config(probe: str | None, options: dict[str, Any]) -> TrainConfig:
    """A checked ``TrainConfig`` of ``probe`` (None: "step", or the protocol's) and ``options``; with a
    ``protocol``, its preset fills every field ``options`` leaves out (``protocol_use.apply_protocol``)."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TrainConfigError(
            f"unknown training option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(names))}"
        )
    # Imported here, not at the top: the command line builds its options from this module, and `--help` should
    # not wait for torch, which these modules load.
    from step_cache.training.epoch_order import EPOCH_ORDERS
    from step_cache.training.metrics import VIEW_AVERAGES
    from step_cache.training.token_data import DATA_MODES, TOKEN_SUBSETS
    from step_cache.training.view_table import VIEW_MODES

    if options.get("protocol") is not None:
        options = apply_protocol(options["protocol"], options)
    config = TrainConfig(probe=protocol_probe(options.get("protocol"), probe), **options)
    from step_cache.probes import check_probe_options  # here, not at the top: torch (as above)

    check_probe_options(config.probe, config.probe_options)  # refused before any data is read
    if config.lr is None:
        config.lr = default_lr(probe)
    if isinstance(config.views, bool):  # the Python API may say views=True / False
        config.views = "on" if config.views else "off"
    if config.val == "none":
        no_val_conflicts(config)
        config.early_stop = False  # nothing to stop on: the run trains its whole schedule
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
        (
            config.view_average in VIEW_AVERAGES,
            f"view_average must be one of {', '.join(VIEW_AVERAGES)}, got {config.view_average!r}",
        ),
        (0 <= config.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {config.label_smoothing}"),
        (config.clip_grad >= 0, f"clip_grad must be >= 0 (0 = off), got {config.clip_grad}"),
        (0 <= config.token_drop < 1, f"token_drop must be in [0, 1), got {config.token_drop}"),
        (0 <= config.reverse_pairs <= 1, f"reverse_pairs must be in [0, 1], got {config.reverse_pairs}"),
        (config.order in EPOCH_ORDERS, f"order must be one of {', '.join(EPOCH_ORDERS)}, got {config.order!r}"),
        (config.views in VIEW_MODES, f"views must be one of {', '.join(VIEW_MODES)}, got {config.views!r}"),
        (0 <= config.val_fraction < 1, f"val_fraction must be in [0, 1), got {config.val_fraction}"),
        (config.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {config.optimizer!r}"),
        (config.vary in VARY_MODES, f"vary must be one of {', '.join(VARY_MODES)}, got {config.vary!r}"),
        (config.val in VAL_MODES, f"val must be one of {', '.join(VAL_MODES)}, got {config.val!r}"),
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


def no_val_conflicts(config: TrainConfig) -> None:
    """Refuse, by name, what needs a validation split beside ``val="none"``: a patience, a checkpoint metric other
    than the default (the checkpoint is the last epoch's). Early stopping is simply off (its default is on)."""
    asked = [
        name
        for name, given in (
            ("patience (--patience)", config.patience is not None),
            ("select_metric (--select-metric)", config.select_metric != "top1"),
        )
        if given
    ]
    if asked:
        raise TrainConfigError(
            f"val='none' (--val none) trains without validation, so it keeps the last epoch's weights: drop "
            f"{', '.join(asked)}"
        )


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
