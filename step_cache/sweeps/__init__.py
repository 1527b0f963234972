"""Sweeps: many probe configurations trained in one pass over the cache (``stacked``), driven by Optuna
(``study``; imported on use, as Optuna is an optional dependency)."""

from step_cache.sweeps.grouping import group_by_shape, shape_key
from step_cache.sweeps.stacked import MemberResult, train_stacked

__all__ = ["MemberResult", "group_by_shape", "shape_key", "train_stacked"]
