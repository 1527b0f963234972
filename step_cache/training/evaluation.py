"""Reusing a trained probe: ``evaluate`` it on (other) shards, ``predict`` per-video top-k classes to a CSV.

The probe is rebuilt from the run's ``config.json`` and loaded from ``best.pt``, once ``run_status`` has checked
that the run did not fail and that ``best.pt`` is the file the run wrote (its recorded sha256). The cache must
hold the same kind of tokens (backbone, weights, preprocessing, frames, layout; the number of clips per video may
differ). Its classes are matched to the probe's *by name*: clips of classes the probe does not know are reported
and left out, never scored against the wrong class. Only clean views are scored: a cache's augmented views
(``extract --views``) are training material, never clips of their own.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from step_cache.cache.manifest import ManifestError, extraction_differences
from step_cache.cache.shards import ShardSet, open_shards
from step_cache.devices import resolve_device
from step_cache.interface import option
from step_cache.probes import recorded_options
from step_cache.probes.layer_inputs import build_layered_probe
from step_cache.training import runs
from step_cache.training.chance import chance_of, pooled_chance
from step_cache.training.data_source import open_token_source
from step_cache.training.eval_plan import (
    check_split,
    default_split,
    int8_note,
    pooling_only,
    pooling_refusal,
    seed_checkpoints,
    storage_only,
    warn_training_clips,
)
from step_cache.training.inference import collect_logits, evaluate_clips
from step_cache.training.metrics import LEGACY_VIEW_AVERAGE, VIEW_AVERAGES, average_by_video, pair_indices
from step_cache.training.metrics_file import describe, split_figures
from step_cache.training.run_notes import clamp_top_k, warn_if_not_above_chance
from step_cache.training.run_record import recorded_holdout
from step_cache.training.run_status import usable_checkpoint, warn_if_unfinished
from step_cache.training.splits import DataError, select_splits
from step_cache.training.token_data import TokenSelection
from step_cache.training.view_table import clean_rows

log = logging.getLogger(__name__)

# Settings that may differ between the training cache and another cache without changing what a token means.
# Augmented views (extract --views) only add training rows: the clean tokens are the same with or without them.
# Test views (extract --test-views) only add val/test rows: each is a clip of the kind the probe was trained on.
_HARMLESS = ("sampling.clips", "views", "test_views")


def load_probe(run_dir: str | Path, weights: str = runs.BEST) -> tuple[dict[str, Any], nn.Module]:
    """(run record, probe with the run's weights) for a train-probe run directory."""
    run_dir = Path(run_dir)
    record = runs.read_config(run_dir)
    config, data = record["config"], record["data"]
    tokens = data["tokens"]  # several layers: concatenated, or mixed in front of the probe (probes.layer_inputs)
    layers, mix = len(tokens.get("layers", [])) or 1, tokens.get("mix", False)
    along = tokens.get("along") == "tokens"  # the layers' tokens one after the other: more tokens, one layer wide
    probe = build_layered_probe(
        config["probe"],
        layer_dim=data["dim"] if mix or along else data["dim"] // layers,
        layers=1 if along else layers,
        mix=mix,
        num_classes=len(data["classes"]),
        frames=data["frames"],
        tokens_per_frame=tokens["tokens_per_frame"] * (layers if along else 1),
        cls_index=tokens["cls_index"],
        **recorded_options(config["probe"], config["probe_options"], str(run_dir)),
    )
    runs.load_weights(probe, usable_checkpoint(run_dir, weights))  # not failed, present, the run's own bytes
    warn_if_unfinished(run_dir)  # still training, or stopped: its best epoch so far, not its final one
    return record, probe.eval()


def check_cache_fits(record: dict[str, Any], shards: ShardSet) -> None:
    """Refuse a cache whose tokens differ from the run's; int8 storage of the same tokens is read back
    (``eval_plan.storage_only``)."""
    differences = [
        d
        for d in extraction_differences(record["data"]["extraction"], shards.manifest.extraction)
        if not d.startswith(_HARMLESS)
    ]
    if any(d.startswith(_LAYERS) for d in differences):
        _check_layers(record, shards)  # the cache stores other blocks than the run's: fine if it has those it read
        differences = [d for d in differences if not d.startswith(_LAYERS)]
    if differences and not storage_only(differences):
        if refusal := pooling_refusal(record, shards, differences):
            raise ManifestError(refusal)
        if pooling_only(differences) and record["data"]["tokens"]["subset"] == "cls":
            return  # pooling leaves the CLS tokens, all this run reads, as they were stored
        where = ", ".join(map(str, shards.directories))
        raise ManifestError(f"{where}: tokens differ from those the probe was trained on: {'; '.join(differences[:4])}")


_LAYERS = "tokens.layers:"


def _check_layers(record: dict[str, Any], shards: ShardSet) -> None:
    """Refuse a cache that lacks a block the run read (``train-probe --layers``); another set of stored blocks
    (``compact --layers`` keeps a subset) is fine: each block's tokens are the same whichever others are stored."""
    read, stored = record["data"]["tokens"].get("layers"), shards.layout.layers
    where = ", ".join(map(str, shards.directories))
    if read is None or stored is None:  # a run or a cache of the last block only (no layer axis)
        run = f"blocks {read}" if read is not None else "the last block only (a cache without a layer axis)"
        cache = f"blocks {list(stored)}" if stored is not None else "the last block only (no layer axis)"
        raise ManifestError(f"{where}: the run read {run}, the cache stores {cache}; use a cache like the run's")
    if missing := [block for block in read if block not in stored]:
        raise ManifestError(
            f"{where}: the run read blocks {read} ({option('layers', record['config'].get('layers'))}); the cache "
            f"stores {list(stored)}, without {missing}"
        )


def map_labels(shards: ShardSet, classes: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
    """Cache labels re-indexed into the probe's ``classes`` (-1: unlabelled or unknown), and the clip count of
    each cache class the probe does not know."""
    lookup = {name: index for index, name in enumerate(classes)}
    to_probe = np.array([lookup.get(name, -1) for name in shards.classes] + [-1], dtype=np.int64)
    mapped = to_probe[shards.labels]  # label -1 picks the trailing -1
    left_out = (shards.labels >= 0) & (mapped < 0) & clean_rows(shards)  # clips: augmented views do not count
    unknown = Counter(shards.classes[label] for label in shards.labels[left_out])
    return mapped, dict(sorted(unknown.items()))


def warn_unknown_labels(shards: ShardSet, indices: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """Warn when videos of ``indices`` carry a label the run was not trained on (predict writes it in the label
    column, and no prediction can ever equal it, so counting matches there would be wrong); returns the videos per
    unknown class."""
    known = set(classes)
    videos: dict[str, set[str]] = {}
    for row in indices[shards.labels[indices] >= 0]:
        name = shards.classes[shards.labels[row]]
        if name not in known:
            videos.setdefault(name, set()).add(shards.videos[row])
    counts = {name: len(videos[name]) for name in sorted(videos)}
    if counts:
        total = len(set(shards.videos[indices].tolist()))
        log.warning(
            "%d of %d videos are labelled with class(es) the run was not trained on: %s; no prediction can match "
            "their label (the run knows %d: %s), so leave them out of any accuracy counted from the CSV",
            sum(counts.values()), total, ", ".join(f"{name} ({n})" for name, n in counts.items()), len(classes),
            ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else ""),
        )  # fmt: skip
    return counts


def recorded_selection(record: dict[str, Any], shards: ShardSet | None = None) -> TokenSelection:
    """The tokens (subset and layers) a recorded run reads, for a cache of its extraction settings, or for
    ``shards``, which may store other blocks beside those the run read (``check_cache_fits``)."""
    tokens, layout = record["data"]["tokens"], record["data"]["extraction"]["tokens"]
    start = layout["cls_tokens"] if tokens["subset"] == "patches" else 0
    # the blocks the run read, as positions into the layers the cache stores
    stored = layout.get("layers") if shards is None or shards.layout.layers is None else list(shards.layout.layers)
    layers = tuple(stored.index(b) for b in tokens["layers"]) if "layers" in tokens else None
    stop = start + tokens["tokens_per_frame"]
    mix, along = tokens.get("mix", False), tokens.get("along") == "tokens"
    part = "cls" if tokens["subset"] == "cls" else "all"  # a CLS-only run reads only the CLS bytes here too
    return TokenSelection(
        tokens["subset"], start, stop, tokens["cls_index"], layers=layers, mix=mix, along_tokens=along, part=part
    )


def evaluate(
    run_dir: str | Path,
    features: str | Path | Sequence[str | Path] | ShardSet,
    *,
    split: str | None = None,
    seed: int | None = None,
    device: str = "auto",
    data: str = "auto",
    workers: int | None = None,
    batch_size: int = 256,
    orders: bool = True,
    view_average: str | None = None,
) -> dict[str, Any]:
    """Metrics (top-1/5, per-class, confusion, pair and order metrics, chance; per video) of a run's best
    checkpoint(s) on the labelled clips of ``features`` in ``split``: "all", or the run's own train / val / test
    selection; None picks the run's headline split (``eval_plan.default_split``). A ``--seeds`` run is scored
    with every seed (mean, ``std``, pooled confusion matrix and chance, as its metrics.json) unless ``seed`` names
    one; each seed's own figures are under ``per_seed``. ``view_average`` (softmax or logits) combines a video's
    rows; None: the run's own (``run_view_average``)."""
    if split is not None:
        check_split(split)
    # Every checkpoint is checked (not failed, the run's own bytes) before anything else is said; the run's own
    # best.pt (the first seed's) is checked also when another seed is scored.
    record, first = load_probe(run_dir)
    view_average = run_view_average(record, view_average)
    checkpoints = seed_checkpoints(str(run_dir), seed)
    probes = [first if weights == runs.BEST else load_probe(run_dir, weights)[1] for _, weights in checkpoints]
    shards = features if isinstance(features, ShardSet) else open_shards(features)
    split = default_split(shards, record) if split is None else split
    check_cache_fits(record, shards)
    classes = record["data"]["classes"]
    labels, unknown = map_labels(shards, classes)
    if unknown:
        log.warning(
            "left out %d clip(s) of class(es) the probe was not trained on: %s",
            sum(unknown.values()), ", ".join(f"{name} ({n})" for name, n in unknown.items()),
        )  # fmt: skip
    config = record["config"]
    pairs = pair_indices([tuple(p) for p in record["data"]["pairs"]], classes)
    # --vary data: each seed held out its own val videos (a lone seed is scored on its own split)
    split_seed = checkpoints[0][0] if config.get("vary") == "data" else config["seed"]
    chosen = select_splits(labels, shards.splits, shards.videos, config["val_fraction"], split_seed,
                           views=shards.views, pairs=pairs, validate=config.get("val", "auto") != "none",
                           holdout=recorded_holdout(record, str(Path(run_dir) / runs.CONFIG)))  # fmt: skip
    # A cache's own val split is every seed's; only a hold-out drawn per seed makes train / val differ between them.
    held_out = chosen.val_source == "val-fraction"
    if config.get("vary") == "data" and len(checkpoints) > 1 and split in ("train", "val") and held_out:
        raise DataError(
            f"{run_dir}: the seeds of a {option('vary', 'data')} run hold out different val videos, so its {split} "
            f"split is not one set: score one seed on its own split ({option('seed', checkpoints[1][0])}, say), or "
            "the test or all split"
        )
    indices = np.nonzero((labels >= 0) & clean_rows(shards))[0] if split == "all" else getattr(chosen, split)
    where = ", ".join(map(str, shards.directories))
    if len(indices) == 0:
        raise DataError(f"{where}: no labelled clips of the probe's classes in split {split!r} to evaluate")
    training_videos = warn_training_clips(indices, chosen, shards)
    if (note := int8_note(record, shards)) is not None:
        log.info("%s", note)
    target = resolve_device(device)
    source = open_token_source(
        shards, indices, recorded_selection(record, shards), labels, mode=data, workers=workers, device=target
    )
    try:
        per_seed = []
        for probe in probes:  # one token source for every seed: the tokens are the same
            figures = evaluate_clips(
                probe.to(target), source, indices, labels, shards.videos, classes, pairs,
                batch_size=batch_size, device=target, orders=orders, view_average=view_average,
            )  # fmt: skip
            per_seed.append(figures)
    finally:
        source.close()
    seeds = [s for s, _ in checkpoints]
    figures = split_figures(per_seed, classes)
    std = figures.pop("std", None)
    return {
        "run": str(run_dir),
        "probe": config["probe"],
        "features": [str(d) for d in shards.directories],
        "split": split,
        "view_average": view_average,
        "seeds": seeds,
        "figures": describe(split, seeds),
        **figures,
        **({"std": std, "vary": config.get("vary", "init")} if std is not None else {}),
        "validation": chosen.val_source,
        "chance": pooled_chance(per_seed) if len(per_seed) > 1 else chance_of(per_seed[0]),
        "training_videos": training_videos,
        "tokens_note": note,
        "classes": classes,
        "excluded_classes": unknown,
        "excluded_clips": int(sum(unknown.values())),
        "per_seed": [{"seed": s, **m} for s, m in zip(seeds, per_seed, strict=True)],
    }


def predict(
    run_dir: str | Path,
    features: str | Path | Sequence[str | Path] | ShardSet,
    out_csv: str | Path,
    *,
    top_k: int | None = None,
    device: str = "auto",
    data: str = "auto",
    workers: int | None = None,
    batch_size: int = 256,
    view_average: str | None = None,
) -> Path:
    """Write one CSV row per video of ``features`` (labelled or not): ``video, clips, label, short, class_1, prob_1,
    ..., class_k, prob_k``, the probabilities the mean softmax of the video's rows (clips, test-view crops) or the
    softmax of their mean logits, as ``view_average`` says (None: the run's own, ``run_view_average``). ``short`` is
    True for a video of fewer frames than the run's T (its clips repeat frames); their count is logged. ``top_k``
    None: 5, or every class when the run has fewer."""
    record, probe = load_probe(run_dir)
    view_average = run_view_average(record, view_average)
    shards = features if isinstance(features, ShardSet) else open_shards(features)
    check_cache_fits(record, shards)
    classes = record["data"]["classes"]
    top_k = clamp_top_k(top_k, classes)  # said once, here
    warn_if_not_above_chance(run_dir)
    indices = np.nonzero(clean_rows(shards))[0]  # clean views only: augmented views are training material
    target = resolve_device(device)
    source = open_token_source(
        shards, indices, recorded_selection(record, shards), shards.labels, mode=data, workers=workers, device=target
    )
    try:
        logits = collect_logits(probe.to(target), source, indices, batch_size=batch_size, device=target)
    finally:
        source.close()
    scores, keys, first = average_by_video(logits, shards.videos[indices], view_average)
    first = indices[first]  # rows of the ShardSet
    probabilities = scores if view_average == "softmax" else torch.softmax(torch.from_numpy(scores), dim=1).numpy()
    ranking = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]
    clips = Counter(shards.videos[indices].tolist())
    short = set(shards.videos[indices][shards.short[indices]].tolist())
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["video", "clips", "label", "short"]
            + [f"{kind}_{k + 1}" for k in range(top_k) for kind in ("class", "prob")]
        )
        for row, (key, clip) in enumerate(zip(keys, first, strict=True)):
            label = shards.labels[clip]
            cells: list[Any] = [key, clips[key], shards.classes[label] if label >= 0 else "", key in short]
            for c in ranking[row]:
                cells += [classes[c], f"{probabilities[row, c]:.6f}"]
            writer.writerow(cells)
    warn_unknown_labels(shards, indices, classes)
    if short:
        log.warning(
            "%d of %d videos had fewer frames than the run's %d per clip, so frames were repeated (short=True in %s)",
            len(short), len(keys), shards.manifest.frames, out_csv,
        )  # fmt: skip
    return out_csv


def run_view_average(record: dict[str, Any], requested: str | None = None) -> str:
    """How ``evaluate`` / ``predict`` combine a video's rows: ``requested``, else the run's recorded
    ``view_average`` (runs recorded before the setting existed averaged logits, so their figures are reproduced)."""
    value = requested if requested is not None else record["config"].get("view_average", LEGACY_VIEW_AVERAGE)
    if value not in VIEW_AVERAGES:
        raise DataError(f"view_average must be one of {', '.join(VIEW_AVERAGES)}, got {value!r}")
    return value
