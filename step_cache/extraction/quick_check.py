"""``extract``'s checks that need no backbone: a re-run with nothing to do, or one that the cache's settings refuse,
is answered before the backbone is loaded or any decode worker started (they cost seconds to tens of seconds).

Settings that follow from the options alone (backbone architecture, weights source and random seed, frames and
clips, token dtype, patch pooling, decoder, views) are compared with the manifest's ``extraction`` at once: a
difference is refused with the same message as the full check. The rest of the settings (preprocessing, token
grid and width, the weights' checksum) need the built model; they are known to match when the manifest records
the same request (``source.request``: backbone name, weights as given — for a file its resolved path, size and
modification time —, image size, pooling, seed, dtype) as this run's, which is then answered from the manifest.
A cache written before ``source.request`` existed takes the full path once (loading the backbone), which records
it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

from step_cache.cache.layers import LAST
from step_cache.cache.manifest import ManifestError, read_manifest
from step_cache.cache.shards import ShardError
from step_cache.cache.writer import ExtractionError, finished_keys, resume_refusal
from step_cache.catalog import VideoItem
from step_cache.extraction.backbones import resolve_backbone
from step_cache.extraction.decoders import decoder_settings
from step_cache.extraction.extract_report import ExtractReport
from step_cache.extraction.sampling import SAMPLING_STRATEGIES, sampling_record
from step_cache.extraction.views import ViewSettings

log = logging.getLogger(__name__)


def request_record(opts: Any) -> dict[str, Any] | None:
    """What the settings that need the built model depend on (``ExtractOptions`` -> plain data); None for a weights
    file that cannot be read (the full path reports it)."""
    weights: Any = opts.weights
    if weights not in ("hub", "random"):
        try:
            path = Path(weights).resolve()
            stat = path.stat()
        except OSError:
            return None
        weights = {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {
        "backbone": opts.backbone,
        "weights": weights,
        "image_size": opts.image_size,
        "pool_patches": opts.pool_patches,
        "seed": opts.seed if opts.weights == "random" else None,
        "dtype": opts.dtype,
        # only when asked for: caches of the last layer keep the request (and the no-op answer) they had
        **({"layers": opts.layers} if opts.layers != LAST else {}),
    }


def expected_settings(known: dict[str, Any], opts: Any, views: ViewSettings) -> dict[str, Any]:
    """The manifest's settings ``known`` with every setting the options decide replaced by the options' value."""
    spec = resolve_backbone(opts.backbone)
    settings = copy.deepcopy(known)
    settings["backbone"] = json.loads(json.dumps({"name": spec.name, "timm_model": spec.timm_name,
                                                  "kwargs": spec.kwargs}))  # fmt: skip
    source = "random" if opts.weights == "random" else "hub" if opts.weights == "hub" else "file"
    weights = settings.setdefault("weights", {})
    weights["source"] = source
    if source == "random":
        weights["seed"] = opts.seed
    known_sampling = settings.get("sampling", {})
    settings["sampling"] = sampling_record(opts.frames, opts.clips, opts.frame_step)
    if known_sampling.get("strategy") not in SAMPLING_STRATEGIES:  # another writer's (synthetic caches): kept
        settings["sampling"] = {**known_sampling, "frames": opts.frames, "clips": opts.clips}
    settings.pop("test_views", None)
    if opts.test_views is not None:
        settings["test_views"] = opts.test_views.to_dict()
    tokens = settings.setdefault("tokens", {})
    tokens["dtype"], tokens["patch_pool"] = opts.dtype, opts.pool_patches
    if opts.layers == LAST:  # other specs need the model's depth: the full path compares them
        tokens.pop("layers", None)
    settings.pop("decoder", None)
    settings.update(decoder_settings(opts.decoder))
    settings.pop("views", None)
    if views.count:
        settings["views"] = views.to_dict()
    return settings


def quick_check(
    out: Path, opts: Any, views: ViewSettings, classes: list[str], pairs: list, videos: Any, items: list[VideoItem]
) -> ExtractReport | None:
    """Before the backbone: ExtractionError when the cache in ``out`` was made with other settings that the options
    decide; the report of a re-run with nothing to do when the manifest records this run's request; else None
    (the full path decides)."""
    try:
        manifest = read_manifest(out)
    except ManifestError:
        return None  # no cache yet (or an unreadable manifest: the full path reports it)
    source = {"videos": str(Path(videos).resolve()) if videos is not None else None}
    expected = expected_settings(manifest.extraction, opts, views)
    refusal = resume_refusal(out, manifest, expected, classes, source)
    if refusal:
        raise ExtractionError(refusal)
    if manifest.source.get("request") is None or manifest.source.get("request") != request_record(opts):
        return None
    return already_complete(out, manifest.extraction, classes, pairs, source, items)


def already_complete(
    out: Path, extraction: dict[str, Any], classes: list[str], pairs: list, source: dict, items: list[VideoItem]
) -> ExtractReport | None:
    """The report of a re-run that has nothing to do: a finished cache of the same settings, classes, videos root
    and pairs that holds every item, with no unfinished shard left behind; or one whose only missing items failed
    before while the folder is read-only (they cannot be retried there: said in the log). Anything else (None) goes
    the usual way, under the lock, which also reports a settings mismatch or a folder it cannot write to."""
    try:
        manifest = read_manifest(out)
    except ManifestError:
        return None
    same_pairs = not pairs or [tuple(p) for p in pairs] == [tuple(p) for p in manifest.pairs]
    if resume_refusal(out, manifest, extraction, classes, source) or not same_pairs:
        return None
    if not manifest.source.get("finished") or any(out.glob(".shard-*.h5.tmp")):
        return None
    try:
        done = finished_keys(out, manifest)
    except (ExtractionError, ShardError):
        return None
    missing = {item.key for item in items} - done
    failed = {failure.video for failure in manifest.failures}
    if missing and (not missing <= failed or os.access(out, os.W_OK)):
        return None
    if missing:
        log.warning("%s: read-only, so the %d videos that failed before are not tried again", out, len(missing))
    return ExtractReport(out=out, manifest=manifest, skipped=len(items) - len(missing))
