"""The ``step-cache`` command: a thin Typer app. Each sub-command lives in its own module and only parses
options and calls the library; the app object lives in ``cli.app``, and this module registers the commands."""

from __future__ import annotations

from cli.app import app


def _register_commands() -> None:
    # Importing a command module registers its commands on the app. Imported on demand so that `import cli.main`
    # stays cheap; the command modules import only cli.app, never this module.
    import cli.cache
    import cli.compact
    import cli.demo
    import cli.extract
    import cli.prepare
    import cli.report
    import cli.sweep
    import cli.timeline
    import cli.train  # noqa: F401


def main() -> None:
    _register_commands()
    app()


__all__ = ["_register_commands", "app", "main"]

if __name__ == "__main__":
    main()
