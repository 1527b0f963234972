"""Applying a protocol preset (``protocols.py``): the fields it sets beneath the options a user gave, the grid a
sweep trains as one stack, the check of a cache's extraction against what the protocol needs, what is printed when
it runs, and the table docs/protocols.md holds. Without torch (``config.make_config`` applies presets)."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from step_cache.cache.layout import TokenLayout
from step_cache.errors import StepCacheError
from step_cache.interface import from_command_line, option
from step_cache.training.layer_choice import layer_positions
from step_cache.training.protocols import PROTOCOLS, Protocol, Source
from step_cache.training.splits import DataError

log = logging.getLogger(__name__)

# Set while a run that has announced its preset trains runs of its own (``--seeds N --vary data``: one per seed).
_ANNOUNCED: ContextVar[bool] = ContextVar("protocol_announced", default=False)

DEFAULT_PROBE = "step"
_OPTION_PREFIX = "probe_options."


class ProtocolError(StepCacheError, ValueError):
    """An unknown protocol, or options that contradict it."""


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_probe(name: str | None, probe: str | None) -> str:
    """The probe a run trains: the protocol's (a different one given is refused), else ``probe`` or "step"."""
    if name is None:
        return probe or DEFAULT_PROBE
    own = get_protocol(name).fields["probe"].value
    if probe is not None and probe != own:
        raise ProtocolError(f"{option('protocol', name)} trains the {own} probe, not {probe}: drop {option('probe')}")
    return own


def apply_protocol(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (what the user gave: explicit options override the preset) over the protocol's fields."""
    protocol = get_protocol(name)
    preset = {k: s.value for k, s in protocol.fields.items() if k != "probe" and not k.startswith(_OPTION_PREFIX)}
    probe_options = {
        k.removeprefix(_OPTION_PREFIX): s.value for k, s in protocol.fields.items() if k.startswith(_OPTION_PREFIX)
    }
    given_options = options.get("probe_options") or {}
    merged = {**preset, **options}
    merged["probe_options"] = {**probe_options, **given_options}
    return merged


def check_single_run(name: str, options: dict[str, Any], fields: Collection[str]) -> None:
    """``train-probe --protocol``: a protocol that searches a training field (one of ``fields``, the
    ``TrainConfig`` fields; probe options keep their defaults) over a grid needs one value of it (the grid itself
    is ``sweep --protocol``'s)."""
    missing = [k for k in get_protocol(name).grid if k in fields and options.get(k) is None]
    if missing:
        grid = get_protocol(name).grid
        wanted = "; ".join(f"{option(k)} (one of {', '.join(map(_text, grid[k].value))})" for k in missing)
        sweep = "sweep" if from_command_line() else "run_sweep"
        raise ProtocolError(
            f"{option('protocol', name)} searches {', '.join(missing)} over a grid: give {wanted}, or train the whole "
            f"grid as one stack with {sweep} {option('protocol', name)}"
        )


def protocol_grid(
    name: str, given: Collection[str] = (), extraction: dict[str, Any] | None = None
) -> dict[str, tuple[Any, ...]]:
    """The grid ``sweep --protocol`` searches: the preset's, less the fields the user fixed (``given``), and of
    ``layers`` only the specs the cache (its manifest's ``extraction``) can serve (``layer_choice.layer_positions``)."""
    grid = {key: source.value for key, source in get_protocol(name).grid.items() if key not in given}
    if "layers" in grid and extraction is not None:
        layout = TokenLayout.from_dict(extraction["tokens"])
        grid["layers"] = tuple(spec for spec in grid["layers"] if _serves(spec, layout))
    return grid


def _serves(spec: str, layout: TokenLayout) -> bool:
    """Whether a cache of ``layout`` holds the layers ``spec`` reads."""
    try:
        layer_positions(spec, layout)
    except DataError:
        return False
    return True


def grid_flags(name: str, given: Collection[str] = (), extraction: dict[str, Any] | None = None) -> list[str]:
    """The protocol's grid (``protocol_grid``) as sweep ``--param NAME=SPEC`` flags (``sweeps/space.py``)."""
    return [f"{k}={','.join(_text(v) for v in values)}" for k, values in protocol_grid(name, given, extraction).items()]


def grid_size(name: str, given: Collection[str] = (), extraction: dict[str, Any] | None = None) -> int:
    return math.prod(len(values) for values in protocol_grid(name, given, extraction).values())


def cache_differences(name: str, extraction: dict[str, Any]) -> list[str]:
    """What the cache's extraction (its manifest's ``extraction``) lacks of the protocol's requirements, one line
    each; empty when it follows the protocol."""
    found = {
        "frames": extraction.get("sampling", {}).get("frames"),
        "frame_step": _frame_step(extraction.get("sampling", {})),
        "test_views": _test_views(extraction.get("test_views")),
        "resolution": _resolution(extraction.get("preprocessing", {}).get("crop")),
        "layers": _layers(extraction.get("tokens", {}).get("layers")),
    }
    return [
        f"{key}: the cache has {_text(found[key])}, the anchor {_text(source.value)} ({source.anchor}, {source.where})"
        for key, source in get_protocol(name).requirements.items()
        if found[key] != source.value
    ]


def _frame_step(sampling: dict[str, Any]) -> int | str:
    return int(sampling["frame_step"]) if sampling.get("strategy") == "frame-step" else "segment centres"


def _test_views(views: dict[str, Any] | None) -> tuple[int, int] | str:
    return (int(views["segments"]), int(views["crops"])) if views else "one centre view"


def _resolution(crop: Any) -> int | str:
    if isinstance(crop, int):
        return crop
    if isinstance(crop, (list, tuple)) and len(set(crop)) == 1:
        return int(crop[0])
    return "unknown" if crop is None else "x".join(map(str, crop))


def _layers(layers: list[int] | None) -> str:
    # the last 4 blocks: 4+ stored blocks ending with consecutive indices (the backbone's depth is not recorded)
    if layers and len(layers) >= 4 and list(layers[-4:]) == list(range(layers[-1] - 3, layers[-1] + 1)):
        return "last4"
    return "the last block only" if not layers else f"blocks {','.join(map(str, layers))}"


def announce(name: str, extraction: dict[str, Any]) -> list[str]:
    """Log, when a preset runs, what this run cannot follow of the anchor (the preset's own differences, the
    cache's); returns the cache's differences (recorded in config.json)."""
    protocol = get_protocol(name)
    differences = cache_differences(name, extraction)
    if _ANNOUNCED.get():  # said once by the run these belong to
        return differences
    log.warning("--protocol %s (%s): what differs from the anchor here (docs/protocols.md):", name, protocol.anchor)
    for line in [*protocol.differences, *(f"cache {d}" for d in differences)]:
        log.warning("  - %s", line)
    return differences


@contextmanager
def announced() -> Iterator[None]:
    """Within it ``announce`` logs nothing (and still returns the cache's differences): for the runs of one run
    that has announced its preset already, such as each seed of ``train-probe --seeds N --vary data``."""
    token = _ANNOUNCED.set(True)
    try:
        yield
    finally:
        _ANNOUNCED.reset(token)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple) and len(value) == 2 and all(type(v) is int for v in value):  # views: SxC
        return f"{value[0]}x{value[1]}"
    if isinstance(value, tuple):
        return ", ".join(_text(v) for v in value)
    return "auto" if value is None else str(value)


def protocol_table() -> str:
    """The Markdown table of docs/protocols.md: every preset's fields, grid, cache requirements,
    each beside the anchor's setting and its file and line (tests/test_protocols.py: the doc holds exactly this)."""
    lines = ["| preset | kind | field | value | anchor's setting | where |", "|---|---|---|---|---|---|"]
    for protocol in PROTOCOLS.values():
        kinds: list[tuple[str, dict[str, Source]]] = [
            ("field", protocol.fields),
            ("grid", protocol.grid),
            ("cache", protocol.requirements),
        ]
        for kind, entries in kinds:
            for key, source in entries.items():
                lines.append(
                    f"| {protocol.name} | {kind} | `{key}` | {_text(source.value)} | {source.anchor} | {source.where} |"
                )
    return "\n".join(lines)
