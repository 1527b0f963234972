"""``StepCacheError`` is the family of the project's own errors: the CLI prints one line for them, and for anything
else (a bug) the traceback under a header that says it is a bug."""

import ast
import importlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.console import BUG_HEADER
from cli.main import _register_commands, app
from step_cache.errors import InputError, StepCacheError
from step_cache.probes.step import StepProbe
from step_cache.synthetic.tokens import write_token_cache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("errors") / "cache"
    write_token_cache(directory, videos_per_class=4, dim=16)
    return directory


def train(cache, out, *extra):
    _register_commands()
    args = ["train-probe", str(cache), "--out", str(out), "--epochs", "1", "--quiet", "--threads", "1", *extra]
    return CliRunner().invoke(app, args)


def test_a_bug_inside_a_probe_reaches_the_terminal_with_its_traceback(cache, tmp_path, monkeypatch):
    def broken_forward(self, tokens):
        raise RuntimeError("a deliberate bug in the probe's forward")

    monkeypatch.setattr(StepProbe, "forward", broken_forward)
    monkeypatch.delenv("STEP_CACHE_DEBUG", raising=False)
    result = train(cache, tmp_path / "run")
    assert result.exit_code == 1
    lines = result.stderr.rstrip().splitlines()  # the run's log lines, then the bug
    start = lines.index(BUG_HEADER)
    assert lines[start + 1] == "Traceback (most recent call last):"
    assert any("in broken_forward" in line for line in lines[start:])  # down to the frame that raised
    assert lines[-1] == "RuntimeError: a deliberate bug in the probe's forward"
    assert not any(line.startswith("error:") for line in lines)


def test_a_step_cache_error_is_one_line(cache, tmp_path, monkeypatch):
    monkeypatch.delenv("STEP_CACHE_DEBUG", raising=False)
    result = train(cache, tmp_path / "run", "--device", "abacus")
    assert result.exit_code == 1
    assert result.stderr == "error: unknown device 'abacus'; use auto, cpu or cuda[:N]\n"


def test_debug_mode_reraises_the_bug(cache, tmp_path, monkeypatch):
    def broken_forward(self, tokens):
        raise RuntimeError("a deliberate bug")

    monkeypatch.setattr(StepProbe, "forward", broken_forward)
    monkeypatch.setenv("STEP_CACHE_DEBUG", "1")
    result = train(cache, tmp_path / "run")
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "a deliberate bug"
    assert BUG_HEADER not in result.stderr


def _error_classes() -> list[tuple[str, str]]:
    """(module, class) of every class named ``*Error`` defined in the package."""
    found = []
    for path in sorted((ROOT / "step_cache").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                found.append((module, node.name))
    return found


def test_every_project_error_is_a_step_cache_error_and_keeps_its_builtin_base():
    classes = _error_classes()
    assert len(classes) >= 33  # the walk found them (33 when the base was introduced, plus InputError)
    for module, name in classes:
        error = getattr(importlib.import_module(module), name)
        assert issubclass(error, StepCacheError), f"{module}.{name} does not derive from StepCacheError"
        if error is not StepCacheError:  # code catching the built-in class it always had keeps working
            assert issubclass(error, (ValueError, RuntimeError)), f"{module}.{name}"
    assert issubclass(InputError, ValueError)
