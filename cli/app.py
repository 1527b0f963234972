"""The ``step-cache`` Typer app object. Command modules import it from here and register their commands on it;
``cli.main`` imports the command modules, so the arrows run one way: main -> commands -> app."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="step-cache",
    help=(
        "Cache frozen image-backbone tokens of videos once (extract), then train STEP and baseline "
        "temporal probes on the cache in minutes (train-probe, sweep)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
