"""The ``step-cache`` command: a thin Typer app. Each sub-command lives in its own module and only parses
options and calls the library."""

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


def _register_commands() -> None:
    # Imported here so that each module can `from cli.main import app` without a cycle.
    import cli.cache
    import cli.demo
    import cli.extract
    import cli.prepare
    import cli.report
    import cli.sweep
    import cli.train  # noqa: F401


def main() -> None:
    _register_commands()
    app()


if __name__ == "__main__":
    main()
