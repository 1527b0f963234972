"""Options that several commands share, declared once so their help and defaults cannot drift apart.

The ``TrainConfig`` options of train-probe and sweep are derived from the config's own field metadata
(``training.config.Setting``: default, help, bounds, which commands offer it) by ``config_options``; the others
are declared here."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from step_cache.errors import InputError
from step_cache.training.config import TrainConfig, settings, value_type

Command = TypeVar("Command", bound=Callable[..., Any])

CacheArguments = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Cache directories written by extract (several: combined, when compatible).", show_default=False
    ),
]
FeaturesOption = Annotated[
    list[Path] | None,
    typer.Option("--features", help="A cache directory, as the design card spells it (the same as CACHE; repeatable)."),
]
Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="CPU threads for torch (and the size of the decode / reader process pools). Default: OMP_NUM_THREADS "
        "if set, else the CPUs this process may use (affinity, capped by a container's CPU quota). A training "
        "run records it in config.json.",
        show_default=False,
    ),
]
Quiet = Annotated[bool, typer.Option(help="No progress bars.")]
Verbose = Annotated[
    bool,
    typer.Option(
        help="Debug log: every epoch's figures (they are always in RUN/metrics.jsonl); in a sweep, a line per epoch "
        "of each stacked batch and one per trial that stops early."
    ),
]
RunDir = Annotated[Path, typer.Option("--run", help="Run directory written by train-probe.")]
Device = Annotated[str, typer.Option(help=settings()["device"].help)]
DataMode = Annotated[str, typer.Option(help=settings()["data"].help)]
Workers = Annotated[int | None, typer.Option(min=0, help=settings()["workers"].help)]


def chosen_caches(command: str, positional: list[Path] | None, features: list[Path] | None) -> list[Path]:
    """The cache directories given positionally and with ``--features``, in that order; at least one."""
    chosen = [*(positional or []), *(features or [])]
    if not chosen:
        raise InputError(f"give the cache directory: step-cache {command} CACHE/ (or --features CACHE/)")
    return chosen


def _option(name: str) -> inspect.Parameter:
    meta = settings()[name]
    default = TrainConfig.__dataclass_fields__[name].default
    option = typer.Option(*meta.flags, help=meta.help, min=meta.min, max=meta.max, show_default=default is not None)
    kind = value_type(name) if default is None else type(default)
    annotation = Annotated[kind | None if default is None else kind, option]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def spliced_options(parameters: list[inspect.Parameter], after: str) -> Callable[[Command], Command]:
    """Give ``command`` the options ``parameters`` (declared elsewhere), placed after its parameter ``after``; the
    function takes them in its ``**kwargs``. Typer reads the function's signature, so the options show in --help
    and reach the function like its own."""

    def decorate(function: Command) -> Command:
        own = list(inspect.signature(function, eval_str=True).parameters.values())
        rest = [p for p in own if p.kind is inspect.Parameter.VAR_KEYWORD]
        if len(rest) != 1:
            raise TypeError(f"{function.__name__} must take the spliced options as **kwargs")
        own.remove(rest[0])
        cut = [p.name for p in own].index(after) + 1
        function.__signature__ = inspect.Signature(  # type: ignore[attr-defined] - what Typer reads
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in [*own[:cut], *parameters, *own[cut:]]]
        )
        return function

    return decorate


def config_options(command: str, after: str) -> Callable[[Command], Command]:
    """An option for every ``TrainConfig`` field whose ``Setting`` lists ``command`` (``spliced_options``)."""
    return spliced_options([_option(name) for name, meta in settings().items() if command in meta.commands], after)


def options_of(template: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters of ``template``, a function that only declares a group of options (``spliced_options``)."""
    return list(inspect.signature(template, eval_str=True).parameters.values())


def given_options(ctx: typer.Context, config: dict[str, Any]) -> dict[str, Any]:
    """The options of ``config`` the user gave on the command line (not left at their defaults): with
    ``--protocol``, only these override the preset."""
    # by name: Typer may run its own copy of click, whose ParameterSource is another enum than click's
    return {
        name: value
        for name, value in config.items()
        if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")
    }
