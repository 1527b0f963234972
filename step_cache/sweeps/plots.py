"""PNG figures of a sweep, drawn from its ``trials.json`` into ``SWEEP/plots/``:

- ``objective_vs_<param>.png`` for every searched parameter: the objective of each completed trial against the
  parameter (log axis for log ranges, one column per choice for lists), pruned trials as grey crosses at the last
  value they reported;
- ``parallel_coordinates.png``: one line per completed trial across every parameter and the objective, coloured
  by the objective.

Figures are drawn with ``matplotlib.figure.Figure`` (no pyplot, no GUI backend, safe in worker processes).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from step_cache.sweeps.results import read_trials

PLOTS = "plots"


def _axis_values(values: list[Any], spec: dict[str, Any]) -> tuple[np.ndarray, list[str] | None]:
    """Numeric positions of parameter values (choice index for categorical) and tick labels for categoricals."""
    if spec["type"] == "categorical":
        labels = [str(c) for c in spec["choices"]]
        lookup = {str(c): i for i, c in enumerate(spec["choices"])}
        return np.array([lookup.get(str(v), np.nan) for v in values], dtype=float), labels
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float), None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _objective_figure(
    name: str, spec: dict[str, Any], done: list[dict], pruned: list[dict], metric: str, path: Path
) -> Path:
    figure = Figure(figsize=(5, 3.6), layout="constrained")
    axes = figure.add_subplot()
    rng = np.random.default_rng(0)
    for rows, key, style in (
        (pruned, "last_reported", {"marker": "x", "color": "0.6", "label": "pruned (last reported)"}),
        (done, "value", {"marker": "o", "color": "tab:blue", "label": "completed"}),
    ):
        if not rows:
            continue
        x, labels = _axis_values([r["params"].get(name) for r in rows], spec)
        if labels is not None:
            x = x + rng.uniform(-0.12, 0.12, len(x))  # jitter so equal choices stay visible
        y = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)
        axes.scatter(x, y, s=22, alpha=0.8, **style)
    if spec["type"] == "categorical":
        axes.set_xticks(range(len(spec["choices"])), [str(c) for c in spec["choices"]])
    elif spec.get("log"):
        axes.set_xscale("log")
    axes.set_xlabel(name)
    axes.set_ylabel(f"val {metric}")
    axes.set_title(f"{metric} vs {name}")
    axes.grid(alpha=0.3)
    if pruned:
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


def _normalised(values: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    if spec["type"] == "categorical":
        return values / max(1, len(spec["choices"]) - 1)
    low, high = float(spec["low"]), float(spec["high"])
    if spec.get("log"):
        values, low, high = np.log(values), math.log(low), math.log(high)
    return (values - low) / (high - low)


def _parallel_figure(space: dict[str, Any], done: list[dict], metric: str, direction: str, path: Path) -> Path:
    names = list(space)
    objective = np.array([r["value"] for r in done], dtype=float)
    columns = [_normalised(_axis_values([r["params"].get(n) for r in done], space[n])[0], space[n]) for n in names]
    span = objective.max() - objective.min()
    columns.append((objective - objective.min()) / span if span > 0 else np.full(len(done), 0.5))
    figure = Figure(figsize=(1.6 * (len(names) + 1) + 1.5, 4), layout="constrained")
    axes = figure.add_subplot()
    norm = Normalize(objective.min(), objective.max() if span > 0 else objective.min() + 1)
    cmap = colormaps["viridis" if direction == "maximize" else "viridis_r"]
    xs = np.arange(len(names) + 1)
    for row in np.argsort(objective if direction == "maximize" else -objective):  # best drawn last, on top
        axes.plot(xs, [c[row] for c in columns], color=cmap(norm(objective[row])), alpha=0.85, linewidth=1.3)
    for x, name in enumerate(names):
        spec = space[name]
        axes.axvline(x, color="0.3", linewidth=0.8)
        if spec["type"] == "categorical":
            for i, choice in enumerate(spec["choices"]):
                axes.annotate(str(choice), (x, i / max(1, len(spec["choices"]) - 1)), fontsize=7, xytext=(3, 0),
                              textcoords="offset points", va="center")  # fmt: skip
        else:
            for y, value in ((0, spec["low"]), (1, spec["high"])):
                axes.annotate(f"{value:g}", (x, y), fontsize=7, xytext=(3, 0), textcoords="offset points", va="center")
    axes.axvline(len(names), color="0.3", linewidth=0.8)
    axes.set_xticks(xs, [*names, f"val {metric}"])
    axes.set_yticks([])
    axes.set_xlim(-0.2, len(names) + 0.4)
    axes.set_title(f"parallel coordinates: {len(done)} completed trials")
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=f"val {metric}")
    figure.savefig(path, dpi=110)
    return path


def sweep_figures(sweep_dir: str | Path) -> list[Path]:
    """Draw the sweep's figures into ``sweep_dir/plots`` and return their paths (none when no trial has a
    value yet)."""
    sweep_dir = Path(sweep_dir)
    content = read_trials(sweep_dir / "trials.json", tables=True)
    metric, direction = content["metric"], content.get("direction", "maximize")
    space = {k: v for k, v in content["space"].items() if v["type"] != "fixed"}
    done = [r for r in content["trials"] if r["state"] == "COMPLETE" and r["value"] is not None]
    pruned = [r for r in content["trials"] if r["state"] == "PRUNED" and r["last_reported"] is not None]
    if not done and not pruned:
        return []
    out = sweep_dir / PLOTS
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        _objective_figure(name, spec, done, pruned, metric, out / f"objective_vs_{_safe(name)}.png")
        for name, spec in space.items()
    ]
    if done and space:
        paths.append(_parallel_figure(space, done, metric, direction, out / "parallel_coordinates.png"))
    return paths
