"""Sweeps: the search over probe configurations. An Optuna study (``study``; imported on use, as Optuna is an
optional dependency), its search space (``space``), results and plots. Training many configurations at once is
the stacking engine's job (``step_cache.training.stacking``), one layer below."""
