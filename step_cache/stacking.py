"""The old import path of ``step_cache.training.stacking`` (docs/sweeps.md showed ``from step_cache.stacking import
train_stacked``): kept so user scripts still run; new code imports ``step_cache.training.stacking``."""

from step_cache.training.stacking import MemberResult, group_by_shape, shape_key, train_stacked

__all__ = ["MemberResult", "group_by_shape", "shape_key", "train_stacked"]
