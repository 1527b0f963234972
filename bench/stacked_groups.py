"""Training named groups of configurations as stacked batches, for the benches that compare recipes
(``defaults.py``, ``augment.py``, ``views.py``): not a benchmark."""

from __future__ import annotations

import time

from step_cache.cache.shards import ShardSet
from step_cache.training.config import TrainConfig
from step_cache.training.stacking.shared_data import DataCache
from step_cache.training.stacking.stacked_run import train_stacked

HEADLINE = ("top1", "pair_accuracy")


def summary(metrics: list[dict], split: str) -> dict[str, list[float]]:
    """metric -> [value per seed] on ``split`` ("val": the top level of metrics.json, or "test")."""
    chosen = [m if split == "val" else m["test"] for m in metrics]
    return {key: [m[key] for m in chosen if m.get(key) is not None] for key in HEADLINE}


def train_groups(shards: ShardSet, groups: dict[str, list[TrainConfig]]) -> tuple[dict[str, dict], float]:
    """Train every group's configs (stacked where shapes allow); per group, the val and test figures per seed, and
    the seconds it all took."""
    configs = [config for members in groups.values() for config in members]
    data = DataCache(shards)
    started = time.perf_counter()
    try:
        results = train_stacked(shards, configs, data=data)
    finally:
        data.close()
    by_group, index = {}, 0
    for name, members in groups.items():
        metrics = [r.metrics for r in results[index : index + len(members)]]
        index += len(members)
        by_group[name] = {"val": summary(metrics, "val"), "test": summary(metrics, "test")}
    return by_group, time.perf_counter() - started
