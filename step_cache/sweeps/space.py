"""The search space of a sweep, from ``--param NAME=SPEC`` flags or a small TOML / YAML file.

SPEC syntax (the same in flags and files):

    lr=log:1e-4..3e-3      log-uniform range          dropout=0..0.3       uniform range
    dropout=0..0.3:0.05    range with a step          depth=1..3           integer range (integer parameters)
    wd=0.0,0.05,0.1        list of choices            mlp=true,false       booleans
    label_smoothing=0.1    one value: fixed for every trial, not searched

A file holds the same under ``[params]`` (or at its top level): a SPEC string, a list (choices), a single
number / boolean (fixed) or a table ``{low = .., high = .., log = true, step = ..}``::

    [params]
    lr = "log:1e-4..3e-3"
    wd = [0.0, 0.05, 0.1]
    dropout = { low = 0.0, high = 0.3 }

Parameters: the per-member hyperparameters (``lr``, ``weight_decay``/``wd``, ``warmup_epochs``/``warmup``,
``label_smoothing``/``ls``, ``clip_grad``, ``dropout``), the probe's structural options (``depth``,
``num_heads``/``heads``, ``mlp_ratio``, ``frame_pos``, ``global_cls``, ``mlp``: whatever the probe takes), and
``batch_size``, ``tokens``, the token-space augmentations ``token_drop`` and ``reverse_pairs``, and ``views``
(``on`` / ``off``: train on a cache's augmented views or on clean clips only). Structural values, and those of
the last five, split a batch of trials into stacks of equal shape.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from step_cache.errors import StepCacheError
from step_cache.interface import from_command_line, option
from step_cache.probes import probe_options
from step_cache.training.config import setting_names, value_type
from step_cache.training.token_data import TOKEN_SUBSETS
from step_cache.training.view_table import VIEW_MODES


class SweepSpaceError(StepCacheError, ValueError):
    """A search space that names an unknown parameter, has a malformed range or searches nothing."""


ALIASES = {"wd": "weight_decay", "ls": "label_smoothing", "warmup": "warmup_epochs", "heads": "num_heads"}
# The TrainConfig fields a sweep may search (their Setting says so), each with its value type.
TRAINING_PARAMS: dict[str, type] = {name: value_type(name) for name in setting_names(searchable=True)}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^(?P<log>log:)?(?P<low>{_NUMBER})\.\.(?P<high>{_NUMBER})(?::(?P<step>{_NUMBER}))?$")


def parameter_types(probe: str) -> dict[str, type]:
    """Every searchable parameter of ``probe`` and its value type."""
    types = dict(TRAINING_PARAMS)
    for name, default in probe_options(probe).items():
        types[name] = int if default is None else type(default)  # num_heads=None means "D // 64": an int
    return types


def probe_option_names(probe: str) -> set[str]:
    return set(probe_options(probe))


@dataclass
class SearchSpace:
    """Optuna distributions of the searched parameters and the values fixed for every trial (canonical names)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    def check_not_empty(self) -> None:
        if not self.distributions:
            fixed = f" (only fixed values: {', '.join(self.fixed)})" if self.fixed else ""
            how = (
                "--param NAME=SPEC with a range or several values, e.g. --param lr=log:1e-4..3e-3, or a --space file"
                if from_command_line()
                else "flags entry 'NAME=SPEC' with a range or several values, e.g. flags=['lr=log:1e-4..3e-3'], or a "
                "space_file"
            )
            raise SweepSpaceError(f"empty search space{fixed}: give at least one {how}")

    def grid(self) -> dict[str, list[Any]]:
        """The lists of values for an exhaustive grid (every searched parameter must be a list of choices)."""
        grid = {}
        for name, distribution in self.distributions.items():
            if not isinstance(distribution, CategoricalDistribution):
                asked = "--grid" if from_command_line() else option("sampler", "grid")
                raise SweepSpaceError(
                    f"{asked} needs a list of values for every parameter; {name} is a range "
                    f"({describe(distribution)}): write it as a list, e.g. {name}=a,b,c"
                )
            grid[name] = list(distribution.choices)
        return grid

    def grid_size(self) -> int:
        return len(list(itertools.product(*self.grid().values())))

    def describe(self) -> dict[str, Any]:
        """JSON-able description (for trials.json and the plots)."""
        described: dict[str, Any] = {name: describe(d) for name, d in self.distributions.items()}
        described.update({name: {"type": "fixed", "value": value} for name, value in self.fixed.items()})
        return described


def describe(distribution: BaseDistribution) -> dict[str, Any]:
    if isinstance(distribution, CategoricalDistribution):
        return {"type": "categorical", "choices": list(distribution.choices)}
    kind = "int" if isinstance(distribution, IntDistribution) else "float"
    return {"type": kind, "low": distribution.low, "high": distribution.high, "log": distribution.log,
            "step": distribution.step}  # fmt: skip


def canonical_name(name: str, probe: str, where: str) -> str:
    name = ALIASES.get(name.strip(), name.strip())
    types = parameter_types(probe)
    if name not in types:
        aliases = ", ".join(f"{a} ({c})" for a, c in ALIASES.items())
        raise SweepSpaceError(
            f"{where}: unknown parameter {name!r} for probe {probe!r}; searchable: {', '.join(sorted(types))}; "
            f"aliases: {aliases}"
        )
    return name


def parse_value(text: Any, kind: type, name: str, where: str) -> Any:
    """One value of parameter ``name`` (a string from a flag or a TOML/YAML scalar) as ``kind``."""
    if kind is bool:
        if isinstance(text, bool):
            return text
        lowered = str(text).strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise SweepSpaceError(f"{where}: {name} takes true or false, got {text!r}")
    if kind is str:
        value = str(text).strip()
        if name == "tokens" and value not in ("auto", *TOKEN_SUBSETS):
            raise SweepSpaceError(f"{where}: tokens takes auto, {', '.join(TOKEN_SUBSETS)}, got {value!r}")
        if name == "views" and value not in VIEW_MODES:
            raise SweepSpaceError(f"{where}: views takes {' or '.join(VIEW_MODES)}, got {value!r}")
        return value
    try:
        number = float(text) if isinstance(text, str) else text
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValueError
    except ValueError:
        raise SweepSpaceError(f"{where}: {name} takes a number, got {text!r}") from None
    if kind is int:
        if float(number) != int(number):
            raise SweepSpaceError(f"{where}: {name} takes whole numbers, got {text!r}")
        return int(number)
    return float(number)


def parse_spec(name: str, spec: Any, probe: str, where: str) -> BaseDistribution | tuple[str, Any]:
    """A distribution, or ("fixed", value) for a single value."""
    kind = parameter_types(probe)[name]
    if isinstance(spec, dict):
        return _from_table(name, spec, kind, where)
    if isinstance(spec, list | tuple):
        return _choices(name, list(spec), kind, where)
    if not isinstance(spec, str):  # a TOML / YAML scalar: fixed
        return ("fixed", parse_value(spec, kind, name, where))
    text = spec.strip()
    if ".." in text:
        return _from_range(name, text, kind, where)
    if text.startswith("log:"):
        raise SweepSpaceError(f"{where}: a log range is written log:LOW..HIGH")
    return _choices(name, [item for item in text.split(",")], kind, where)


def _from_range(name: str, text: str, kind: type, where: str) -> BaseDistribution:
    match = _RANGE.match(text.replace(" ", ""))
    if match is None:
        raise SweepSpaceError(
            f"{where}: bad range; write LOW..HIGH, log:LOW..HIGH or LOW..HIGH:STEP "
            "(e.g. lr=log:1e-4..3e-3, dropout=0..0.3)"
        )
    return _range(name, match["low"], match["high"], bool(match["log"]), match["step"], kind, where)


def _from_table(name: str, table: dict, kind: type, where: str) -> BaseDistribution | tuple[str, Any]:
    unknown = sorted(set(table) - {"low", "high", "log", "step", "choices"})
    if unknown:
        raise SweepSpaceError(f"{where}: unknown key(s) {', '.join(unknown)}; use low, high, log, step or choices")
    if "choices" in table:
        return _choices(name, table["choices"], kind, where)
    if "low" not in table or "high" not in table:
        raise SweepSpaceError(f"{where}: a range table needs low and high")
    return _range(name, table["low"], table["high"], bool(table.get("log", False)), table.get("step"), kind, where)


def _choices(name: str, values: Any, kind: type, where: str) -> BaseDistribution | tuple[str, Any]:
    if not isinstance(values, list) or not values or any(str(v).strip() == "" for v in values):
        raise SweepSpaceError(f"{where}: needs a non-empty list of values (no empty items)")
    unique = list(dict.fromkeys(parse_value(v, kind, name, where) for v in values))
    return ("fixed", unique[0]) if len(unique) == 1 else CategoricalDistribution(unique)


def _range(name: str, low: Any, high: Any, log: bool, step: Any, kind: type, where: str) -> BaseDistribution:
    if kind not in (int, float):
        raise SweepSpaceError(f"{where}: {name} is not numeric; list its values instead (e.g. {name}=true,false)")
    low, high = parse_value(low, kind, name, where), parse_value(high, kind, name, where)
    step = None if step is None else parse_value(step, kind, name, where)
    text = f"{'log:' if log else ''}{low}..{high}"
    if not low < high:
        raise SweepSpaceError(f"{where}: LOW must be below HIGH (got {text})")
    if log and low <= 0:
        raise SweepSpaceError(f"{where}: a log range needs LOW > 0 (got {text})")
    if step is not None and (log or step <= 0):
        raise SweepSpaceError(f"{where}: a step must be positive and cannot go with log")
    if kind is int:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=step)


def parse_flag(flag: str, probe: str) -> tuple[str, BaseDistribution | tuple[str, Any]]:
    where = f"--param {flag}"
    if "=" not in flag:
        raise SweepSpaceError(f"{where}: expected NAME=SPEC, e.g. lr=log:1e-4..3e-3 or wd=0,0.05,0.1")
    name, spec = flag.split("=", 1)
    name = canonical_name(name, probe, where)
    if not spec.strip():
        raise SweepSpaceError(f"{where}: no values after '='")
    return name, parse_spec(name, spec, probe, where)


def read_space_file(path: str | Path) -> dict[str, Any]:
    """The parameter entries of a TOML (.toml) or YAML (.yaml/.yml) space file."""
    path = Path(path)
    if not path.is_file():
        raise SweepSpaceError(f"{path}: search space file does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            content = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            content = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            content = json.loads(text)
        else:
            raise SweepSpaceError(f"{path}: unknown space file type; use .toml, .yaml / .yml or .json")
    except ImportError as error:
        package = {"yaml": "pyyaml"}.get(error.name or "", error.name)
        raise SweepSpaceError(f"{path}: reading it needs {package} (pip install {package})") from None
    except SweepSpaceError:
        raise
    except Exception as error:  # noqa: BLE001 - TOMLDecodeError, YAMLError, JSONDecodeError: one message
        raise SweepSpaceError(f"{path}: cannot parse ({str(error).splitlines()[0]})") from None
    if not isinstance(content, dict):
        raise SweepSpaceError(f"{path}: expected a mapping of parameter names to specs")
    params = content.get("params", content)
    if not isinstance(params, dict):
        raise SweepSpaceError(f"{path}: 'params' must be a mapping of parameter names to specs")
    return params


def build_space(probe: str, flags: list[str] | None = None, space_file: str | Path | None = None) -> SearchSpace:
    """The search space from a file and flags (flags override file entries of the same parameter)."""
    probe_options(probe)  # unknown probe: ProbeConfigError naming the choices
    entries: dict[str, tuple[str, Any]] = {}
    if space_file is not None:
        for name, spec in read_space_file(space_file).items():
            where = f"{space_file}"
            canonical = canonical_name(str(name), probe, where)
            entries[canonical] = (where, parse_spec(canonical, spec, probe, f"{where}: {name}"))
    for flag in flags or []:
        name, parsed = parse_flag(flag, probe)
        entries[name] = (flag, parsed)
    space = SearchSpace()
    for name, (_, parsed) in entries.items():
        if isinstance(parsed, tuple):
            space.fixed[name] = parsed[1]
        else:
            space.distributions[name] = parsed
    return space
