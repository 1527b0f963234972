"""step-cache: cache frozen image-backbone tokens of videos once, then train temporal probes (STEP) on them.

The public API is imported lazily, so ``import step_cache`` is fast and decode workers stay free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "extract": "step_cache.extraction.engine",
    "ExtractOptions": "step_cache.extraction.engine",
    "ExtractReport": "step_cache.extraction.engine",
    "ExtractionError": "step_cache.extraction.engine",
    "open_shards": "step_cache.cache.shards",
    "ShardSet": "step_cache.cache.shards",
    "read_manifest": "step_cache.cache.manifest",
    "load_backbone": "step_cache.extraction.backbones",
    "BACKBONES": "step_cache.extraction.backbones",
    "VideoItem": "step_cache.catalog",
    "discover_videos": "step_cache.catalog",
    "read_annotations": "step_cache.catalog",
    "verify_cache": "step_cache.cache.verify",
    "merge": "step_cache.extraction.distributed",
    "train_probe": "step_cache.training.trainer",
    "TrainResult": "step_cache.training.trainer",
    "evaluate": "step_cache.training.evaluation",
    "predict": "step_cache.training.evaluation",
    "run_sweep": "step_cache.sweeps.study",
    "build_space": "step_cache.sweeps.space",
    "build_report": "step_cache.report",
    "make_demo_dataset": "step_cache.demo_dataset",
    "run_demo": "step_cache.demo",
    "Recognizer": "step_cache.recognition.recognizer",
    "Prediction": "step_cache.recognition.recognizer",
    "timeline": "step_cache.recognition.timeline",
    "predict_videos": "step_cache.recognition.videos",
    "DemoSettings": "step_cache.demo",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'step_cache' has no attribute {name!r}")
