"""Structure checks: project modules import each other in one direction only (no cycles, and never from a higher
layer of the package), and stay a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("step_cache", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its body: top level, in functions, under TYPE_CHECKING.
    ``from pkg import sub`` counts as importing the module ``pkg.sub`` when that is a module, else ``pkg``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..y import z
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = _project_modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_sees_function_level_and_relative_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text("def f():\n    from . import two\n")
    (package / "two.py").write_text("import pkg.one\n")
    modules = {"pkg": package / "__init__.py", "pkg.one": package / "one.py", "pkg.two": package / "two.py"}
    assert _imports("pkg.one", modules["pkg.one"], modules) == {"pkg.two"}
    assert _imports("pkg.two", modules["pkg.two"], modules) == {"pkg.one"}


def test_project_has_no_import_cycles():
    graph = import_graph()
    assert "cli.main" in graph and "step_cache.extraction.engine" in graph  # the walk found the project
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The package's layers, top to bottom. A module may import its own layer or any layer below it, never one above:
# a reader can learn the project bottom-up, and each layer is testable without the ones above it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("step_cache.demo", "step_cache.report"),
    ("step_cache.recognition", "step_cache.sweeps"),
    ("step_cache.training", "step_cache.stacking", "step_cache.extraction"),
    ("step_cache.cache", "step_cache.datasets", "step_cache.benchmark", "step_cache.synthetic"),
    ("step_cache.probes",),
    (
        "step_cache.catalog",
        "step_cache.checkpoints",
        "step_cache.cpu_budget",
        "step_cache.devices",
        "step_cache.extras",
        "step_cache",
    ),
)


def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int:
    """Index of the layer (0: top) of the longest prefix in ``layers`` that names ``module`` or a package above it."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    if best is None:
        raise KeyError(f"{module} is in no layer of tests/test_imports.py LAYERS: place its package there")
    return best[1]


def upward_imports(graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Every import of a module from a higher layer than the importer's, as readable lines."""
    return [
        f"{module} (layer {layer_of(module, layers)}) imports {target} (layer {layer_of(target, layers)}, higher)"
        for module in sorted(graph)
        for target in sorted(graph[module])
        if layer_of(target, layers) < layer_of(module, layers)
    ]


def test_layer_check_names_the_offending_import():
    layers = (("app",), ("app.high",), ("app.low", "app.base"))
    graph = {"app.low.x": {"app.high.y"}, "app.high.y": {"app.low.x", "app.base"}, "app.base": set(), "app": set()}
    assert layer_of("app.high.y", layers) == 1 and layer_of("app", layers) == 0 and layer_of("app.base", layers) == 2
    assert upward_imports(graph, layers) == ["app.low.x (layer 2) imports app.high.y (layer 1, higher)"]


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    for module in graph:
        layer_of(module)  # every package is placed in a layer
    assert upward_imports(graph) == []


def test_stacking_engine_lives_below_sweeps():
    graph = import_graph()
    sweeps = {name for name in graph if name.startswith("step_cache.sweeps.")}
    names = ("batch", "distinct", "plots", "results", "search", "space", "storage", "study")
    assert sweeps == {f"step_cache.sweeps.{name}" for name in names}
    assert "step_cache.stacking.engine" in graph["step_cache.training.seeds"]
    assert not any(target.startswith("step_cache.sweeps") for target in graph["step_cache.training.seeds"])


def test_cli_command_modules_import_the_app_not_main():
    graph = import_graph()
    commands = [name for name in graph if name.startswith("cli.") and "cli.app" in graph[name]]
    assert {"cli.extract", "cli.train", "cli.cache"} <= set(commands)
    importers = {name for name in graph if "cli.main" in graph[name]}
    assert importers <= {"cli.__main__"}, f"only the entry point may import cli.main, not {importers}"


def test_modules_stay_under_350_lines():
    for path in [*(ROOT / "step_cache").rglob("*.py"), *(ROOT / "cli").glob("*.py")]:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 350, f"{path.relative_to(ROOT)} has {lines} lines; split it where a seam shows"
