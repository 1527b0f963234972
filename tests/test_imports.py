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


# The package's layers, top to bottom. A module may import its own package (the longest prefix below that names
# it) or any layer below it, never a layer above and never another package of its own layer: packages share a layer
# only where neither imports the other, so the order is strict where it matters and a reader can learn the project
# bottom-up, each layer testable without the ones above it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("step_cache.demo",),
    ("step_cache.report",),
    ("step_cache.recognition", "step_cache.sweeps"),
    ("step_cache.training.trainer", "step_cache.stacking"),  # one seed or --seeds; the old path of the stack
    ("step_cache.training.stacking",),  # K members trained as one vmapped batch: --seeds and sweeps
    ("step_cache.training", "step_cache.extraction"),
    ("step_cache.demo_dataset", "step_cache.datasets"),
    ("step_cache.synthetic",),
    ("step_cache.cache",),
    ("step_cache.probes",),
    (
        "step_cache.catalog",
        "step_cache.checkpoints",
        "step_cache.cpu_budget",
        "step_cache.devices",
        "step_cache.extras",
        "step_cache",
    ),
    # StepCacheError, the base of every error the project raises; how messages name a setting (Python or CLI)
    ("step_cache.errors", "step_cache.interface"),
)


def place_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> tuple[int, str]:
    """(layer index (0: top), prefix) of the longest prefix in ``layers`` that names ``module`` or a package above
    it."""
    best: tuple[int, int, str] | None = None  # (prefix length, layer, prefix)
    for index, prefixes in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index, prefix)
    if best is None:
        raise KeyError(f"{module} is in no layer of tests/test_imports.py LAYERS: place its package there")
    return best[1], best[2]


def layer_of(module: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> int:
    return place_of(module, layers)[0]


def wrong_way_imports(graph: dict[str, set[str]], layers: tuple[tuple[str, ...], ...] = LAYERS) -> list[str]:
    """Every import of a module from a higher layer, or from another package of the importer's own layer, as
    readable lines."""
    found = []
    for module in sorted(graph):
        layer, prefix = place_of(module, layers)
        for target in sorted(graph[module]):
            target_layer, target_prefix = place_of(target, layers)
            if target_layer < layer:
                found.append(f"{module} (layer {layer}) imports {target} (layer {target_layer}, higher)")
            elif target_layer == layer and target_prefix != prefix:
                found.append(f"{module} imports {target}: {prefix} and {target_prefix} share layer {layer}")
    return found


def test_layer_check_names_the_offending_import():
    layers = (("app",), ("app.high",), ("app.low", "app.base"))
    graph = {"app.low.x": {"app.high.y"}, "app.high.y": {"app.low.x", "app.base"}, "app.base": set(), "app": set()}
    assert layer_of("app.high.y", layers) == 1 and layer_of("app", layers) == 0 and layer_of("app.base", layers) == 2
    assert wrong_way_imports(graph, layers) == ["app.low.x (layer 2) imports app.high.y (layer 1, higher)"]
    graph = {"app.low.x": {"app.base", "app.low.z"}, "app.low.z": set(), "app.base": set(), "app": set()}
    assert wrong_way_imports(graph, layers) == ["app.low.x imports app.base: app.low and app.base share layer 2"]


def test_layer_check_sees_a_nested_package_apart_from_its_parent():
    layers = (("app.top",), ("app.top.inner",), ("app",))
    assert place_of("app.top.inner.x", layers) == (1, "app.top.inner") and place_of("app.top.y", layers)[0] == 0
    graph = {"app.top.inner.x": {"app.top.y"}, "app.top.y": set()}
    assert wrong_way_imports(graph, layers) == ["app.top.inner.x (layer 1) imports app.top.y (layer 0, higher)"]


def test_no_module_imports_a_higher_layer_or_a_neighbour():
    graph = import_graph()
    for module in graph:
        layer_of(module)  # every package is placed in a layer
    assert wrong_way_imports(graph) == []


def test_stacking_lives_inside_training_below_the_trainer_and_sweeps():
    graph = import_graph()
    sweeps = {name for name in graph if name.startswith("step_cache.sweeps.")}
    names = ("batch", "distinct", "plots", "results", "search", "space", "storage", "study")
    assert sweeps == {f"step_cache.sweeps.{name}" for name in names}
    assert "step_cache.training.stacking.stacked_run" in graph["step_cache.training.stacking.seeds"]
    assert "step_cache.training.stacking.seeds" in graph["step_cache.training.trainer"]
    stacking = [name for name in graph if name.startswith("step_cache.training.stacking")]
    for name in stacking:  # the stack builds on training's modules, never on the trainer or on sweeps
        assert not any(t.startswith(("step_cache.sweeps", "step_cache.training.trainer")) for t in graph[name]), name


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


def test_the_documented_old_stacking_path_still_imports():
    import step_cache.stacking as old
    import step_cache.training.stacking as new

    assert old.train_stacked is new.train_stacked and old.group_by_shape is new.group_by_shape
