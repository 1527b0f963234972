"""The built-in benchmark of nearly symmetric actions: pairs of classes whose clips are the same random visual
process played forwards or backwards, plus order-free classes. ``make_demo_dataset`` writes it to disk."""

from step_cache.demo_dataset.actions import DEFAULT_KINDS, KINDS
from step_cache.demo_dataset.dataset import DemoDataset, make_demo_dataset, parse_size
from step_cache.demo_dataset.scene import BenchmarkError, RenderedClip, SceneConfig, class_table, render_clip

__all__ = [
    "DEFAULT_KINDS",
    "KINDS",
    "BenchmarkError",
    "DemoDataset",
    "RenderedClip",
    "SceneConfig",
    "class_table",
    "make_demo_dataset",
    "parse_size",
    "render_clip",
]
