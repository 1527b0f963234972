"""``--help`` is readable at 80 columns: every option's help text of every command appears whole (wrapped, never
cut or squeezed into a narrow box), and no line is wider than the terminal."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from cli.main import _register_commands, app

_register_commands()
WIDTH = 80


def _commands() -> dict[str, typer.core.click.Command]:
    group = typer.main.get_command(app)
    return {name: group.get_command(None, name) for name in group.list_commands(None)}


def _words(text: str) -> str:
    return " ".join(text.split())


def test_every_option_help_appears_whole_at_80_columns():
    runner = CliRunner()
    commands = _commands()
    assert {"extract", "train-probe", "sweep", "timeline", "predict", "inspect"} <= set(commands)
    for name, command in commands.items():
        result = runner.invoke(app, [name, "--help"], terminal_width=WIDTH, env={"COLUMNS": str(WIDTH)})
        assert result.exit_code == 0, f"{name}: {result.output}"
        too_wide = [line for line in result.stdout.splitlines() if len(line) > WIDTH]
        assert not too_wide, f"{name} --help: lines wider than {WIDTH}: {too_wide}"
        shown = _words(result.stdout)
        assert "…" not in result.stdout, f"{name} --help cuts text"
        for parameter in command.params:
            if getattr(parameter, "help", None):
                assert _words(parameter.help) in shown, f"{name} --help: {parameter.name}'s help is not whole"


def test_sweep_param_help_is_whole_and_commands_keep_their_panels():
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", "--help"], terminal_width=WIDTH, env={"COLUMNS": str(WIDTH)})
    assert "a single value fixes it (label_smoothing=0.1)." in _words(result.stdout)
    overview = runner.invoke(app, ["--help"], terminal_width=WIDTH, env={"COLUMNS": str(WIDTH)}).stdout
    assert "Stage one: tokens:" in overview and "Stage two: probes:" in overview
    # each command's first sentence whole, not cut at one line ("keep...")
    assert "keep the best checkpoint, report order metrics." in _words(overview)
