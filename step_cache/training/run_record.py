"""The reproducible record of a training run written to ``config.json`` (its config, the data it saw, the versions
and threads it ran with), the defaults an older record stands for, and comparing two records (``--resume``,
sweep workers)."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Collection
from dataclasses import asdict
from typing import Any

import h5py
import numpy as np
import torch

from step_cache import __version__
from step_cache.cpu_budget import recorded_threads
from step_cache.training.config import LOCAL_FIELDS, TrainConfig
from step_cache.training.schedule import schedule_steps
from step_cache.training.splits import HOLDOUT_FILES, HOLDOUT_GROUPS_V1, HOLDOUT_RULES, DataError


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


# Settings whose default is not what a run recorded before they existed did: those runs never stopped early, and
# averaged a video's clip logits (``--view-average logits``).
PREDATING = {"early_stop": False, "view_average": "logits"}


def with_config_defaults(stored: dict[str, Any], skip: Collection[str] = ()) -> dict[str, Any]:
    """A stored config (config.json, a sweep study's settings) with the settings it predates at their defaults: a
    run recorded before a setting existed (``views``, ``token_drop``) trained with its default, or with its
    ``PREDATING`` value. ``skip``: fields the record leaves out on purpose (a study's execution-only fields)."""
    defaults = {**json.loads(json.dumps(asdict(TrainConfig()))), **PREDATING}
    return {**{key: value for key, value in defaults.items() if key not in skip}, **stored}


def recorded_holdout(record: dict[str, Any], where: str = "config.json") -> str:
    """The val hold-out rule a run used (``splits.HOLDOUT_RULES``): its ``data.holdout``. A record without one
    predates the marker: its run held out groups, HMDB51 clips grouped within an action (``HOLDOUT_GROUPS_V1``), if
    its config has ``val`` (a setting added after group hold-out, in the same change set), else single files
    (``HOLDOUT_FILES``)."""
    rule = record.get("data", {}).get("holdout")
    if rule is None:
        return HOLDOUT_GROUPS_V1 if "val" in record.get("config", {}) else HOLDOUT_FILES
    if rule not in HOLDOUT_RULES:
        raise DataError(
            f"{where}: data.holdout {rule!r} is a val hold-out rule this step-cache does not know (known: "
            f"{', '.join(HOLDOUT_RULES)}); use the step-cache version that trained the run"
        )
    return rule


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
