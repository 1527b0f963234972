"""Stacking: several probe members of one shape trained as one vmapped batch, used by ``--seeds`` and by sweeps.

``train_stacked`` trains configurations grouped by shape (``grouping``) with one AdamW state per member
(``adamw``); ``members`` holds the stacked parameters and ``shared_data`` the token data every group reuses;
``seeds`` is ``train-probe --seeds``; ``nested`` builds linear members whose inputs nest (DINOv2's grid) as masked
heads of the widest width, so they stack too. It builds on the rest of ``training`` and only ``trainer`` (and
sweeps) build on it.
"""

from step_cache.training.stacking.grouping import group_by_shape, shape_key
from step_cache.training.stacking.stacked_run import MemberResult, train_stacked

__all__ = ["MemberResult", "group_by_shape", "shape_key", "train_stacked"]
