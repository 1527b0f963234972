"""The backbone and preprocessing a run's tokens came from, rebuilt from what the run recorded.

A run's ``config.json`` keeps its cache's extraction settings (``data.extraction``: backbone, weights identity,
preprocessing, sampling, token layout). From them we rebuild the exact backbone that made the training tokens, so
that a new video gets the tokens extraction would have given it. Random weights are rebuilt from their recorded
seed; a weights file must have the recorded checksum (a different file would give other tokens silently).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from step_cache.cache.files import file_sha256
from step_cache.cache.manifest import ManifestError, extraction_differences, read_manifest
from step_cache.errors import StepCacheError
from step_cache.extraction.backbones import Backbone, load_backbone
from step_cache.extraction.engine import ExtractOptions, extraction_settings
from step_cache.interface import from_command_line, option


class RunSettingsError(StepCacheError, ValueError):
    """The run's recorded extraction settings cannot be rebuilt here (missing or mismatched weights...)."""


def extract_options(record: dict[str, Any], weights: str | Path | None = None) -> dict[str, Any]:
    """``extract`` keyword options that reproduce the run's tokens (backbone, weights, frames, clips, frame step,
    image size, patch pooling, dtype, stored layers, seed, test views). ``weights`` overrides the recorded weights
    file (checked against its checksum). For a run on a cache rewritten by ``step-cache compact``, the options of the
    cache it was compacted from: then ``compaction`` says how to compact their tokens into the run's."""
    extraction = record["data"]["extraction"]
    check_rebuildable(extraction)
    compacted = compaction(extraction)
    recorded = extraction["weights"]
    crop = extraction["preprocessing"]["crop"]
    return {
        "backbone": extraction["backbone"]["name"],
        "weights": _weights_argument(record, recorded, weights),
        "frames": int(extraction["sampling"]["frames"]),
        "clips": int(extraction["sampling"]["clips"]),
        "frame_step": extraction["sampling"].get("frame_step"),  # a frame-step cache's step (None: segment centres)
        # The model's input size is the crop; passing it rebuilds the same model (a square crop: one number).
        "image_size": int(crop) if isinstance(crop, int) else None,
        "pool_patches": compacted["source_pool"] if compacted else int(extraction["tokens"].get("patch_pool", 1)),
        "dtype": compacted["source_dtype"] if compacted else str(extraction["tokens"]["dtype"]),
        "seed": int(recorded.get("seed", 0)),
        # val/test videos (by --annotations) get the cache's test views, so their answers are the cache's
        "test_views": (views["segments"], views["crops"]) if (views := extraction.get("test_views")) else None,
        # the stored blocks of a cache of several layers (extract --layers; absent: the last block only)
        **({"layers": ",".join(map(str, extraction["tokens"]["layers"]))} if "layers" in extraction["tokens"] else {}),
    }


def compaction(extraction: dict[str, Any]) -> dict[str, Any] | None:
    """How ``step-cache compact`` rewrote the run's cache when extraction alone does not give its tokens (patches
    pooled from stored values, int8 tokens read back as floats): the extracted cache's ``source_dtype`` and
    ``source_pool``, and compact's ``pool_patches`` and ``dtype``. None when extraction gives the tokens (compact
    to int8 writes what ``extract --dtype int8`` writes)."""
    tokens = extraction.get("tokens", {})
    pooled = tokens.get("pooled_after_storage")
    if not pooled and "dequantized_from" not in tokens:
        return None
    source_pool = int(pooled["patch_pool"]) if pooled else int(tokens.get("patch_pool", 1))
    return {
        "source_dtype": str(pooled["dtype"] if pooled else tokens["dequantized_from"]),
        "source_pool": source_pool,
        "pool_patches": int(tokens.get("patch_pool", 1)) // max(1, source_pool),
        "dtype": str(tokens["dtype"]),
    }


def check_rebuildable(extraction: dict[str, Any], streaming: bool = False) -> None:
    """Refuse, before any video is decoded, a run whose tokens no extraction of videos gives: synthetic tokens, or
    tokens projected on principal directions (``compact --project``). ``streaming`` (``timeline``,
    ``Recognizer``, which encode frame by frame without a cache to compact) also refuses the other compacted
    caches, which ``predict --videos`` reproduces by compacting the extracted tokens the same way."""
    tokens = extraction.get("tokens", {})
    if extraction.get("backbone", {}).get("name") == "synthetic" or "crop" not in extraction.get("preprocessing", {}):
        raise RunSettingsError(
            f"{_run()}: the run was trained on synthetic tokens (no backbone or preprocessing to rebuild), so it "
            f"cannot classify videos; use {_call('predict --features', 'predict(run_dir, cache)')} with a cache of "
            "the same kind"
        )
    if projection := tokens.get("projection"):
        raise RunSettingsError(
            f"{_run()}: the run was trained on tokens projected on {projection.get('components')} principal directions "
            f"({_call('step-cache compact --project', 'compact(project=...)')}), which cannot be rebuilt from videos; "
            f"to classify videos, train on a cache without {option('project')}"
        )
    if streaming and (compacted := compaction(extraction)):
        what = []
        if compacted["pool_patches"] > 1:
            what.append(f"{option('pool_patches', compacted['pool_patches'])}: patches averaged from stored tokens")
        if "dequantized_from" in tokens:
            what.append(f"{option('dtype', compacted['dtype'])}: {compacted['source_dtype']} tokens read back")
        raise RunSettingsError(
            f"{_run()}: the run was trained on a cache rewritten by {_call('step-cache compact', 'compact')} "
            f"({'; '.join(what)}), whose tokens timeline and Recognizer do not reproduce frame by frame; use "
            f"{_call('predict --videos', 'predict_videos')} (which compacts the same way), or train on a cache "
            "extracted with those settings"
        )


def _call(command: str, function: str) -> str:
    """What to run, as the caller runs things: ``command`` on the command line, ``function`` in Python."""
    return command if from_command_line() else function


def _run() -> str:
    """The run as the caller named it: ``--run`` on the command line, ``run_dir`` (the argument) in Python."""
    return "--run" if from_command_line() else "run_dir"


def _weights_argument(record: dict[str, Any], recorded: dict[str, Any], given: str | Path | None) -> str:
    source = recorded["source"]
    if given is not None and str(given) in ("random", "hub"):
        if str(given) != source:
            raise RunSettingsError(
                f"{option('weights', str(given))}: the run's tokens were made with {_describe(recorded)}"
            )
        return str(given)
    if source == "random":
        if given is not None:
            raise RunSettingsError(
                f"{option('weights', str(given))}: the run's tokens were made with random weights (seed "
                f"{recorded.get('seed')}), not a weights file; leave {option('weights')} out"
            )
        return "random"
    if source == "hub":
        if given is not None:  # the cache records a hub identity, which a file's would never equal
            raise RunSettingsError(
                f"{option('weights', str(given))}: the run's tokens were made with timm's hub weights "
                f"({recorded.get('hf_hub_id')}); leave {option('weights')} out (they load from the Hugging Face "
                "cache when downloaded before)"
            )
        return "hub"
    path = Path(given) if given is not None else _recorded_weights_path(record)
    check_weights_file(path, recorded)
    return str(path)


def _describe(recorded: dict[str, Any]) -> str:
    if recorded["source"] == "random":
        return f"random weights (seed {recorded.get('seed')})"
    return f"{recorded['source']} weights (sha256 {str(recorded.get('sha256'))[:12]}...)"


def check_weights_file(path: Path, recorded: dict[str, Any]) -> None:
    """Refuse a weights file whose sha256 differs from the one recorded at extraction."""
    if not path.is_file():
        raise RunSettingsError(f"{path}: weights file does not exist")
    expected = recorded.get("sha256")
    if expected is None:
        raise RunSettingsError(
            f"{path}: the run's tokens were made with {recorded['source']} weights of unrecorded checksum, so "
            "this file cannot be checked against them"
        )
    actual = file_sha256(path)
    if actual != expected:
        raise RunSettingsError(
            f"{path}: sha256 {actual[:12]}... differs from the weights the run's tokens were extracted with "
            f"({expected[:12]}...); these weights would give other tokens, refused"
        )


def _recorded_weights_path(record: dict[str, Any]) -> Path:
    """Where the weights file lay when the run's cache was extracted (the cache manifest records it)."""
    for directory in record["data"].get("features", []):
        try:
            path = read_manifest(directory).source.get("weights_path")
        except ManifestError:
            continue
        if path and Path(path).is_file():
            return Path(path)
    raise RunSettingsError(
        "the run's tokens were made with a weights file that is no longer where its cache recorded it; pass it "
        f"with {option('weights', 'FILE')} (its checksum is checked)"
    )


def load_run_backbone(record: dict[str, Any], weights: str | Path | None = None) -> tuple[Backbone, ExtractOptions]:
    """The backbone of the run's cache, rebuilt; refused when its settings differ from the recorded ones."""
    check_rebuildable(record["data"]["extraction"], streaming=True)  # before the backbone is built
    options = ExtractOptions(**extract_options(record, weights), progress=False)
    backbone = load_backbone(
        options.backbone, options.weights, options.image_size, options.pool_patches, options.seed, options.dtype,
        layers=options.layers,
    )  # fmt: skip
    rebuilt = extraction_settings(backbone, options)
    rebuilt.pop("test_views", None)
    recorded = json.loads(json.dumps(record["data"]["extraction"]))
    # augmented training views (extract --views) and val/test views (--test-views) add rows, they do not change
    # the backbone or a training clip's tokens, which a window's are
    recorded.pop("views", None)
    recorded.pop("test_views", None)
    differences = extraction_differences(recorded, rebuilt)
    if differences:
        raise RunSettingsError(f"cannot rebuild the backbone the run's tokens came from: {'; '.join(differences[:4])}")
    return backbone, options
