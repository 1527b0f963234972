"""``metrics.json``, a finished run's public record (format version 2; docs/training.md, "Run files").

It opens with the headline, the figures the terminal prints: ``headline_split`` names the split they come from
(test when the run has one, else val, which also chose the checkpoint), ``seeds`` the seeds they are the mean over,
``std`` their sample standard deviation (several seeds only); ``confusion_matrix``, ``per_class_accuracy`` and
``chance`` pool the videos of those seeds on that split (``pooled_seeds``). Below the headline: ``splits`` (each
split's figures, mean over seeds, with ``std``) and ``per_seed`` (each seed's best epoch, early stop and full val /
test metrics), then what the run cost.

With several seeds, ``vary`` says what differs between them (``init``: initial weights and dropout; ``data``: also
batch order and the val hold-out), so what ``std`` measures; files written before it read as ``init``.

Version 2 files written before ``--val none`` lack ``validation`` and ``checkpoint``: they read as a run that
validated and kept its best checkpoint. A ``--val none`` run (``checkpoint: "last"``) has no val figures: no
``splits.val``, no ``val`` in ``per_seed``, and its headline is always the test split.

Version 1 (files without ``format_version``) held the first seed's *val* figures at the top level, the test figures
under ``test``, and for ``--seeds`` ``mean`` / ``std`` / ``per_seed`` summaries; ``upgrade`` reads it as version 2
(its confusion matrix is the first seed's: ``pooled_seeds`` says so). A newer version is refused by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from step_cache.errors import StepCacheError
from step_cache.training.chance import chance_of, pooled_chance

FORMAT_VERSION = 2
# TrainConfig.vary -> what the std over seeds measures (metrics.json's "vary", printed beside every std)
VARY_LABELS = {"init": "init only", "data": "init, batch order and val hold-out"}

# The figures a run reports per split, averaged over seeds (those present and not None in every seed).
FIGURES = (
    "top1",
    "top5",
    "mean_class_accuracy",
    "pair_accuracy",
    "reversed_top1",
    "reversed_pair_accuracy",
    "shuffled_top1",
    "shuffled_pair_accuracy",
    "loss",
)
# What the run as a whole cost and was (the same for every seed of a stack).
RUN_KEYS = ("probe", "unit", "classes", "pairs", "parameters", "parameters_without_head", "data_mode", "device",
            "stacked_members", "select_metric", "view_average", "validation", "checkpoint")  # fmt: skip
COST_KEYS = ("train_time_s", "train_clips_per_s", "data_wait_share")


class MetricsFormatError(StepCacheError, ValueError):
    """A metrics.json this version cannot read (written by a newer step-cache)."""


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    average = math.fsum(values) / len(values)
    spread = math.fsum((v - average) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return average, math.sqrt(spread)


def pooled_matrix(matrices: Sequence[list[list[int]] | None]) -> list[list[int]] | None:
    """The element-wise sum of the seeds' confusion matrices (None when one is missing)."""
    if not matrices or any(not m for m in matrices):
        return None
    return [[sum(cells) for cells in zip(*rows, strict=True)] for rows in zip(*matrices, strict=True)]


def per_class_of(matrix: list[list[int]], classes: Sequence[str]) -> dict[str, float | None]:
    """Accuracy of each class (its row's diagonal share) by name; None for a class with no video."""
    return {
        name: (row[i] / sum(row) if sum(row) else None)
        for i, (name, row) in enumerate(zip(classes, matrix, strict=True))
    }


def split_figures(per_seed: Sequence[dict[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """One split's figures over the seeds' metrics of it: each of ``FIGURES`` as the mean, ``std`` beside them
    (several seeds), the videos scored per seed, and the confusion matrix and per-class accuracy pooled."""
    figures: dict[str, Any] = {}
    spread: dict[str, float] = {}
    for key in FIGURES:
        values = [m.get(key) for m in per_seed]
        if values and all(v is not None for v in values):
            figures[key], spread[key] = _mean_std(values)
    if len(per_seed) > 1:
        figures["std"] = spread
    figures["videos"] = per_seed[0].get("videos") if per_seed else None
    figures["clips"] = per_seed[0].get("clips") if per_seed else None
    matrix = pooled_matrix([m.get("confusion_matrix") for m in per_seed])
    if matrix is not None:
        figures["confusion_matrix"] = matrix
        figures["per_class_accuracy"] = per_class_of(matrix, classes)
    return figures


def metrics_document(
    seeds: Sequence[int],
    members: Sequence[dict[str, Any]],
    wall_time_s: float | None = None,
    vary: str = "init",
) -> dict[str, Any]:
    """The version-2 ``metrics.json`` of a run from its seeds' own metrics (``records.final_metrics``: val at the
    top level, test under ``test``), first seed first. The training loop's cost is the slowest seed's (a stack
    trains until its last seed stops); ``wall_time_s`` is the command's that finished the run. With several seeds,
    ``vary`` (``TrainConfig.vary``) records what differs between them, what the ``std`` measures."""
    first = members[0]
    classes = first["classes"]
    split = "test" if first.get("test") else "val"
    # --val none: no val figures (records.final_metrics), so no val split entry
    splits = {"val": split_figures(members, classes)} if first.get("checkpoint") != "last" else {}
    if split == "test":
        splits["test"] = split_figures([m["test"] for m in members], classes)
    headline = splits[split]
    document: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "probe": first["probe"],
        "headline_split": split,
        "seeds": list(seeds),
        "figures": describe(split, seeds),
        **{key: headline[key] for key in FIGURES if key in headline},
    }
    if "std" in headline:
        document["std"] = headline["std"]
        document["vary"] = vary
    document["videos"], document["clips"] = headline["videos"], headline["clips"]
    document["confusion_matrix"] = headline.get("confusion_matrix")
    document["per_class_accuracy"] = headline.get("per_class_accuracy")
    document["pooled_seeds"] = list(seeds)
    scored = [m["test"] if split == "test" else m for m in members]
    document["chance"] = pooled_chance(scored) if len(scored) > 1 else chance_of(scored[0])
    document["epochs"] = first["epochs"]  # planned
    document["epochs_trained"] = max(_trained(m) for m in members)
    document["best_epoch"] = first["best_epoch"]  # the first seed's, as early_stop; every seed's is in per_seed
    document["early_stop"] = first.get("early_stop")
    document.update({key: first[key] for key in RUN_KEYS if key in first})
    slowest = max(members, key=lambda m: m.get("train_time_s") or 0.0)
    document.update({key: slowest.get(key) for key in COST_KEYS})
    document["wall_time_s"] = wall_time_s
    document["splits"] = splits
    document["per_seed"] = [_seed_entry(seed, m) for seed, m in zip(seeds, members, strict=True)]
    return document


def spread_note(metrics: dict[str, Any]) -> str | None:
    """What a ``metrics.json``'s std varies over — "std over 3 seeds, init only" — or None with one seed. Files
    without ``vary`` are from runs whose seeds shared batches and splits: init only. ``--vary data`` varies the val
    hold-out only where one was drawn (``validation`` "val-fraction"), not on a cache's own val split."""
    seeds = metrics.get("seeds") or []
    if len(seeds) < 2:
        return None
    vary = metrics.get("vary", "init")
    if vary == "data" and metrics.get("validation", "val-fraction") != "val-fraction":
        return f"std over {len(seeds)} seeds, init and batch order"  # the cache's val split: no hold-out to vary
    return f"std over {len(seeds)} seeds, {VARY_LABELS[vary]}"


def seed_metrics(document: dict[str, Any]) -> dict[str, Any]:
    """A one-seed ``metrics.json`` back as the seed's own metrics (``records.final_metrics``' shape, what
    ``metrics_document`` takes): ``--vary data`` trains each seed as a run of its own and pools their files."""
    entry = document["per_seed"][0]
    metrics = {key: document[key] for key in (*RUN_KEYS, *COST_KEYS, "epochs", "headline_split") if key in document}
    metrics.update(entry.get("val") or {})
    metrics.update({"best_epoch": entry.get("best_epoch"), "early_stop": entry.get("early_stop")})
    metrics["chance"] = document.get("chance")
    if entry.get("test"):
        metrics["test"] = entry["test"]
    return metrics


def describe(split: str, seeds: Sequence[int], pooled: bool = False) -> str:
    """What a run's headline figures are, for captions: "test split, seed 0", "test split, mean over seeds 0, 1",
    and with ``pooled`` (a confusion matrix) "test split, seeds 0, 1 pooled"."""
    if len(seeds) == 1:
        return f"{split} split, seed {seeds[0]}"
    names = ", ".join(map(str, seeds))
    return f"{split} split, seeds {names} pooled" if pooled else f"{split} split, mean over seeds {names}"


def _trained(member: dict[str, Any]) -> int:
    stop = member.get("early_stop") or {}
    return int(stop.get("epoch") or member.get("epochs") or 0)


def _split_entry(metrics: dict[str, Any]) -> dict[str, Any]:
    # a seed's full metrics of one split (run-level keys and the nested test split left out)
    return {key: value for key, value in metrics.items() if key not in (*RUN_KEYS, *COST_KEYS, "test")
            and key not in ("best_epoch", "epochs", "early_stop", "headline_split", "chance", "seed")}  # fmt: skip


def _seed_entry(seed: int, metrics: dict[str, Any]) -> dict[str, Any]:
    entry = {"seed": seed, "best_epoch": metrics.get("best_epoch"), "early_stop": metrics.get("early_stop")}
    if metrics.get("checkpoint") != "last":  # --val none has no val figures
        entry["val"] = _split_entry(metrics)
    if metrics.get("test"):
        entry["test"] = _split_entry(metrics["test"])
    return entry


def upgrade(metrics: dict[str, Any], seed: int = 0, path: str = "metrics.json") -> dict[str, Any]:
    """Any readable version of a ``metrics.json`` as version 2. ``seed``: a one-seed version-1 run's seed (its file
    did not record it; config.json does)."""
    version = metrics.get("format_version", 1)
    if version == FORMAT_VERSION:
        return metrics
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MetricsFormatError(
            f"{path}: format_version {version!r} is newer than this step-cache reads ({FORMAT_VERSION}); upgrade "
            "step-cache"
        )
    return _from_version_1(metrics, seed)


def _from_version_1(old: dict[str, Any], seed: int) -> dict[str, Any]:
    split = old.get("headline_split", old.get("headline"))
    split = "test" if split == "test" and old.get("test") else "val"
    seeds = list(old.get("seeds") or [seed])
    own = {"val": old, "test": old.get("test")}  # the first seed's full metrics of each split
    mean, std = old.get("mean"), old.get("std")

    def figures_of(name: str) -> dict[str, Any]:
        if mean is not None and std is not None:  # --seeds: the mean and std of every seed
            averaged = mean.get("test", {}) if name == "test" else mean
            figures = {key: averaged[key] for key in FIGURES if key in averaged}
            spread = std.get("test", {}) if name == "test" else std
            figures["std"] = {key: spread[key] for key in FIGURES if key in spread}
        else:
            figures = {key: own[name][key] for key in FIGURES if own[name].get(key) is not None}
        figures["videos"], figures["clips"] = own[name].get("videos"), own[name].get("clips")
        if own[name].get("confusion_matrix"):
            figures["confusion_matrix"] = own[name]["confusion_matrix"]
            figures["per_class_accuracy"] = own[name].get("per_class_accuracy")
        return figures

    splits = {name: figures_of(name) for name in ("val", "test") if own[name]}
    headline = splits[split]
    document: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "upgraded_from": 1,
        "probe": old.get("probe"),
        "headline_split": split,
        "seeds": seeds,
        "figures": describe(split, seeds),
        **{key: headline[key] for key in FIGURES if key in headline},
    }
    if "std" in headline:
        document["std"] = headline["std"]
    document["videos"], document["clips"] = headline.get("videos"), headline.get("clips")
    document["confusion_matrix"] = headline.get("confusion_matrix")
    document["per_class_accuracy"] = headline.get("per_class_accuracy")
    document["pooled_seeds"] = seeds[:1]  # version 1 kept the first seed's matrix only
    document["chance"] = old.get("chance") or chance_of(own[split])
    document["epochs"] = old.get("epochs")
    stops = [entry.get("early_stop") or {} for entry in old.get("per_seed") or [old]]
    document["epochs_trained"] = max((int(s.get("epoch") or 0) for s in stops), default=0) or old.get("epochs")
    document["best_epoch"] = old.get("best_epoch")
    document["early_stop"] = old.get("early_stop")
    document.update({key: old[key] for key in (*RUN_KEYS, *COST_KEYS) if key in old})
    document["splits"] = splits
    document["per_seed"] = (
        [_v1_seed_entry(entry) for entry in old["per_seed"]] if old.get("per_seed") else [_seed_entry(seeds[0], old)]
    )
    return document


def _v1_seed_entry(entry: dict[str, Any]) -> dict[str, Any]:
    # version 1's per_seed summaries: the figures of val at the entry's top level, test under "test"
    seed_keys = ("seed", "best_epoch", "early_stop")
    converted = {key: entry.get(key) for key in seed_keys}
    converted["val"] = {key: value for key, value in entry.items() if key not in (*seed_keys, "test")}
    if entry.get("test"):
        converted["test"] = entry["test"]
    return converted
