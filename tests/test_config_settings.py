"""Each training setting is declared once, on its ``TrainConfig`` field: the train-probe and sweep options, the
sweep space, the stack grouping and the execution-only fields are derived from those declarations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from cli.main import _register_commands, app
from step_cache.sweeps.space import TRAINING_PARAMS
from step_cache.training.config import EXECUTION_FIELDS, TrainConfig, default_lr, settings
from step_cache.training.stacking.grouping import MEMBER_FIELDS

ROOT = Path(__file__).resolve().parents[1]
_register_commands()


def options(command: str) -> dict:
    return {param.name: param for param in typer.main.get_command(app).get_command(None, command).params}


def test_train_probe_and_sweep_options_are_the_config_settings():
    for command in ("train-probe", "sweep"):
        params = options(command)
        for name, setting in settings().items():
            if command not in setting.commands:
                assert name not in params, f"{command} has --{name}, its Setting does not list the command"
                continue
            param = params[name]
            assert param.help == setting.help and param.default == TrainConfig.__dataclass_fields__[name].default
            assert (param.min, param.max) == (setting.min, setting.max)
    assert options("train-probe")["weight_decay"].opts == ["--weight-decay", "--wd"]
    assert {"lr", "seeds", "token_drop"} <= set(options("train-probe")) and "lr" not in options("sweep")
    assert options("sweep")["seed"].help == options("train-probe")["seed"].help  # one help text


def test_the_lr_help_states_the_defaults_the_config_applies():
    lr = settings()["lr"].help
    assert f"default {default_lr('linear'):g} for linear, {default_lr('step'):g} for the others" in lr
    assert default_lr("linear") == 1e-2 and default_lr("attentive") == default_lr("step") == 1e-3


def test_sweep_space_stack_grouping_and_resume_derive_from_the_settings():
    floats = ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "clip_grad", "token_drop", "reverse_pairs")
    assert dict(TRAINING_PARAMS) == {
        "batch_size": int,
        **dict.fromkeys(floats, float),
        "views": str,
        "tokens": str,
        "layers": str,
    }
    assert MEMBER_FIELDS == ("lr", "weight_decay", "warmup_epochs", "label_smoothing", "clip_grad", "seed")
    assert EXECUTION_FIELDS == ("device", "data", "memory_fraction", "workers", "eval_batch_size", "progress")


def test_the_command_line_reads_the_config_without_loading_torch():
    code = "import sys\nfrom cli.main import _register_commands\n_register_commands()\nprint('torch' in sys.modules)\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
