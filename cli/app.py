"""The ``step-cache`` Typer app object. Command modules import it from here and register their commands on it;
``cli.main`` imports the command modules, so the arrows run one way: main -> commands -> app."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from typer.core import TyperGroup

try:  # recent typer runs its own copy of click: its Context, formatter and wrapper are the ones in use
    from typer import _click as click
    from typer._click import _textwrap
except ImportError:  # older typer uses click itself
    import click
    from click import _textwrap


# The panels of `step-cache --help`, named once here for every command module.
DATA_PANEL = "Data"
TOKENS_PANEL = "Stage one: tokens"
PROBES_PANEL = "Stage two: probes"
DEMO_PANEL = "Demo"


class _WholeWordWrapper(_textwrap.TextWrapper):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **{**kwargs, "break_on_hyphens": False})


@contextlib.contextmanager
def _whole_words() -> Iterator[None]:
    # click wraps help with textwrap's default break_on_hyphens, which splits option values such as "vit-tiny"
    # or "in-memory" across lines; its wrap_text looks the wrapper class up at each call, so it is swapped here,
    # for the time help is written only.
    original = _textwrap.TextWrapper
    _textwrap.TextWrapper = _WholeWordWrapper
    try:
        yield
    finally:
        _textwrap.TextWrapper = original


class WholeWordFormatter(click.HelpFormatter):
    """click's help formatter, wrapping at spaces only."""

    def write_text(self, text: str) -> None:
        with _whole_words():
            super().write_text(text)

    def write_dl(self, rows: object, col_max: int = 30, col_spacing: int = 2) -> None:
        with _whole_words():
            super().write_dl(rows, col_max, col_spacing)


class PlainContext(click.Context):
    formatter_class = WholeWordFormatter


class PanelGroup(TyperGroup):
    """Plain (click) help, commands listed under their panel titles. Rich's boxed help squeezed option text into
    a narrow column and cut words it could not fit ("mean_class_accurac…"), at 80 columns and even at 150; plain
    help wraps every word whole at the terminal's width (COLUMNS)."""

    context_class = PlainContext

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            command.context_class = PlainContext  # its --help wraps whole words too
        return command

    def format_commands(self, ctx: typer.Context, formatter: click.HelpFormatter) -> None:
        panels: dict[str, list[tuple[str, str]]] = {}
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        commands = [(name, command) for name, command in commands if command is not None and not command.hidden]
        if not commands:
            return
        for name, command in commands:
            panel = getattr(command, "rich_help_panel", None) or "Commands"
            # The first sentence whole (wrapped), not click's cut at one line's width ("keep...").
            panels.setdefault(panel, []).append((name, command.get_short_help_str(limit=10_000)))
        for panel, rows in panels.items():
            with formatter.section(panel):
                formatter.write_dl(rows)


app = typer.Typer(
    cls=PanelGroup,
    rich_markup_mode=None,  # plain help: see PanelGroup
    name="step-cache",
    help=(
        "Cache frozen image-backbone tokens of videos once (extract), then train STEP and baseline "
        "temporal probes on the cache in minutes (train-probe, sweep)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
