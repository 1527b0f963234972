"""Helpers of the benches that write one JSON line per measured (cache, probe) and print tables from them
(``defaults.py``, ``augment.py``, ``views.py``, ``defaults_pooled.py``, ``early_stopping.py``): not a benchmark."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def pending(out: Path, caches: list[Path], probes: list[str]) -> Iterator[tuple[Path, str]]:
    """The (cache, probe) pairs not yet in ``out``: a bench stopped midway goes on where it stopped."""
    done = set()
    if out.is_file():
        done = {(r["cache"], r["probe"]) for r in map(json.loads, out.read_text().splitlines()) if r}
    for cache in caches:
        for probe in probes:
            if (str(cache), probe) not in done:
                yield cache, probe


def append_row(out: Path, row: dict) -> None:
    with out.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1 if len(values) > 1 else 0):.1f}"


def cache_name(cache: str) -> str:
    """ "d48" for d48/shards (extract's usual layout), "d48-int8" for a cache written to d48-int8/."""
    path = Path(cache)
    return (path.parent.name if path.name == "shards" else path.name) or cache


def variant_cells(row: dict, names: list[str]) -> list[str]:
    """Test top-1 and pair accuracy (mean ± std over seeds) of each named group of a bench row ("–": none)."""
    cells = []
    for name in names:
        test = row["groups"].get(name, {}).get("test", {})
        cells += [mean_std(test.get("top1", [])), mean_std(test.get("pair_accuracy", []))]
    return cells
