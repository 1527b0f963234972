"""``Setting``: what a ``TrainConfig`` field (``config.py``) means to its users, declared once beside its default with
``setting(default, help, **flags)``; the command-line options, the sweep space, the stack grouping and the fields
``--resume`` may change are derived from these declarations (``config.settings``, ``config.setting_names``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
