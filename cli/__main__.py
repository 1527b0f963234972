"""The entry point of the ``step-cache`` program (pyproject's script) and of ``python -m cli``.

SIGINT and SIGTERM become stop requests before anything else is imported (``step_cache.stopping.install``): the
command's own imports (typer, the command modules, torch) take 0.1-0.4 s, and a Ctrl-C among them ended the command
with a KeyboardInterrupt traceback and exit -2. Now it stops the command as it begins, with exit 130 / 143; only the
interpreter's own start-up (tens of milliseconds) is left to Python's default handling."""

from step_cache import stopping


def main() -> None:
    stopping.install()
    from cli.main import main as run_command  # after install(): see above

    run_command()


if __name__ == "__main__":
    main()
