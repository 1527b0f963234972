"""``TrainConfig``: the hyperparameters of a probe training run, their checks, and the reproducible record of a
run written to ``config.json``."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import h5py
import numpy as np
import torch

from step_cache import __version__
from step_cache.cpu_budget import recorded_threads
from step_cache.training.early_stopping import resolve_patience
from step_cache.training.optimization import default_lr, resolve_schedule, schedule_steps
from step_cache.training.records import SELECT_METRICS
from step_cache.training.token_data import DATA_MODES, TOKEN_SUBSETS
from step_cache.training.views import VIEW_MODES


class TrainConfigError(ValueError):
    """A training option that is unknown or out of range."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Fields in ``EXECUTION_FIELDS`` only change how fast it runs (on
    CPU the metrics do not depend on them), so ``--resume`` may change them; the others must match."""

    probe: str = "step"
    probe_options: dict[str, Any] = field(default_factory=dict)  # e.g. dropout, num_heads, frame_pos, mlp, depth
    # None: chosen from the number of training clips (optimization.resolve_schedule); a run records the values used.
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # None: optimization.default_lr(probe) (1e-2 for linear, 1e-3 for the others)
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # linear warm-up, per optimizer step, then cosine decay to 0
    label_smoothing: float = 0.0
    clip_grad: float = 1.0  # max gradient norm; 0 disables clipping
    token_drop: float = 0.0  # share of each frame's patch tokens dropped per training clip (augment.py)
    reverse_pairs: float = 0.0  # probability a mirrored-pair clip is reversed and relabelled as its partner
    views: str = "on"  # on: each epoch one of a training clip's cached views (extract --views); off: clean only
    # Early stopping (training/early_stopping.py): stop after ``patience`` epochs without a better validation score
    # (None: max(10, ceil(0.3 x epochs)), resolved with the schedule); off runs every planned epoch.
    early_stop: bool = True
    patience: int | None = None
    # The validation metric that picks the best checkpoint and drives early stopping (records.SELECT_METRICS):
    # top1, mean-class (classes weighted equally, as Drive&Act reports) or pair (mirrored pairs).
    select_metric: str = "top1"
    seed: int = 0
    seeds: int = 1  # > 1: seeds seed .. seed+seeds-1 trained together as one stack; mean ± std (training/seeds.py)
    val_fraction: float = 0.2  # of training videos held out, only when the cache has no "val" split
    tokens: str = "auto"  # auto | all | cls | patches (auto: cls for the linear probe, which reads nothing else)
    pairs: str | None = None  # pairs file; default: the manifest's pairs
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # Execution only:
    device: str = "auto"
    data: str = "auto"  # auto | memory | streaming
    memory_fraction: float = 0.5  # auto loads into RAM below this share of available memory
    workers: int | None = None  # streaming reader processes (default: spare threads of the CPU budget, at most 4)
    eval_batch_size: int | None = None  # default: 4 x batch_size
    progress: bool = True


EXECUTION_FIELDS = ("device", "data", "memory_fraction", "workers", "eval_batch_size", "progress")
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


def with_schedule(config: TrainConfig, train_clips: int) -> TrainConfig:
    """``config`` with ``epochs`` and ``batch_size`` resolved for ``train_clips`` training clips (see
    ``optimization.resolve_schedule``), and the early-stopping patience for those epochs; the values given stay."""
    epochs, batch_size = resolve_schedule(config.epochs, config.batch_size, train_clips)
    patience = resolve_patience(config.early_stop, config.patience, epochs)
    return replace(config, epochs=epochs, batch_size=batch_size, patience=patience)


def schedule_record(requested: TrainConfig, resolved: TrainConfig, train_clips: int) -> dict[str, Any]:
    """What ``config.json`` says of the schedule: the values used, which were chosen automatically, the steps."""
    total, warmup = schedule_steps(resolved.epochs, train_clips, resolved.batch_size, resolved.warmup_epochs)
    return {
        "epochs": resolved.epochs,
        "batch_size": resolved.batch_size,
        "auto": [name for name in ("epochs", "batch_size") if getattr(requested, name) is None],
        "optimizer_steps": total,
        "warmup_steps": warmup,
    }


def versions() -> dict[str, str]:
    return {
        "step_cache": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
        "python": platform.python_version(),
    }


def run_record(config: TrainConfig, data: dict[str, Any]) -> dict[str, Any]:
    """The content of ``config.json``: the config, the data it saw (cache identity, classes, splits), versions."""
    return {
        "config": asdict(config),
        "data": data,
        "versions": versions(),
        "threads": recorded_threads().record(),  # execution only: never compared on --resume
        "command": sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# Settings whose default is not what a run recorded before they existed did: those runs never stopped early.
PREDATING = {"early_stop": False}


def with_config_defaults(stored: dict[str, Any], skip: Collection[str] = ()) -> dict[str, Any]:
    """A stored config (config.json, a sweep study's settings) with the settings it predates at their defaults: a
    run recorded before a setting existed (``views``, ``token_drop``) trained with its default, or with its
    ``PREDATING`` value. ``skip``: fields the record leaves out on purpose (a study's execution-only fields)."""
    defaults = {**json.loads(json.dumps(asdict(TrainConfig()))), **PREDATING}
    return {**{key: value for key, value in defaults.items() if key not in skip}, **stored}


def record_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Settings that differ between a stored run record and a new one, ignoring execution-only fields."""
    new = json.loads(json.dumps(new))  # compare like with like: tuples become lists, as in the stored file
    differences = []
    old_config = with_config_defaults(old.get("config", {}))
    new_config = new["config"]
    for key in sorted(set(old_config) | set(new_config)):
        if key in LOCAL_FIELDS:
            continue
        if old_config.get(key) != new_config.get(key):
            differences.append(f"{key}: {old_config.get(key)!r} in the run, {new_config.get(key)!r} now")
    for key in ("manifest_hash", "pairs", "tokens"):
        if old.get("data", {}).get(key) != new["data"].get(key):
            differences.append(f"data.{key}: {old.get('data', {}).get(key)!r} in the run, {new['data'].get(key)!r} now")
    return differences
