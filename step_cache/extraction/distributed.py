"""Extraction across GPUs and machines: deterministic parts, one cache per part, and a merged manifest.

Each part is an ordinary cache directory ``OUT/parts/part-III-of-NNN`` (own shards, manifest, lock and resume),
holding the videos whose stable hash falls in it, so a part that died can be re-run alone and adding videos to
the catalogue never moves a video to another part. ``merge`` then writes ``OUT/manifest.json`` listing every
part's shards, and ``OUT`` reads like any cache. Under ``torchrun`` each rank extracts its part, and rank 0
merges once all ranks are past a barrier (gloo: works on CPU-only and GPU nodes alike).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from step_cache.cache.disk_space import full_disk_said
from step_cache.cache.identity import qualified_groups
from step_cache.cache.locking import DirectoryLock
from step_cache.cache.manifest import Manifest, ManifestError, ShardRecord, read_manifest, write_manifest
from step_cache.cache.shards import check_compatible, read_shard_metadata, shard_root
from step_cache.cache.writer import merged_storage
from step_cache.extraction.parts import PARTS_DIR, part_directory, part_of, partition
from step_cache.interface import option

log = logging.getLogger(__name__)
_PART_NAME = re.compile(r"^part-(\d{3})-of-(\d{3})$")


def find_parts(out: str | Path) -> list[Path]:
    """Part directories under ``OUT/parts``; all must come from the same ``--num-parts``."""
    root = Path(out) / PARTS_DIR
    parts = sorted(p for p in root.glob("part-*-of-*") if p.is_dir() and _PART_NAME.match(p.name))
    if not parts:
        raise ManifestError(f"{root}: no part directories (part-III-of-NNN) to merge")
    totals = {int(_PART_NAME.match(p.name).group(2)) for p in parts}
    if len(totals) > 1:
        raise ManifestError(f"{root}: parts of different {option('num_parts')} ({sorted(totals)}); keep one set")
    total = totals.pop()
    present = {int(_PART_NAME.match(p.name).group(1)) for p in parts}
    missing = sorted(set(range(total)) - present)
    if missing:
        raise ManifestError(
            f"{root}: part(s) {missing} of {total} are missing; run them before merging (e.g. "
            f"{option('num_parts', total)} {option('part', missing[0])})"
        )
    return parts


def merge(out: str | Path, parts: Sequence[str | Path] | None = None) -> Manifest:
    """Write ``OUT/manifest.json`` listing the shards of every part (default: all of ``OUT/parts``).

    Parts must have identical extraction settings and class lists (extract computes classes from the whole
    catalogue before partitioning, so they do). Unfinished parts are merged with a warning. Parts extracted from
    different video folders keep their videos apart: each shard entry then records its part's root (format 4) and
    readers qualify colliding keys with it. A part given twice, or a copy of another, is refused.
    """
    out = Path(out)
    part_dirs = [Path(p) for p in parts] if parts else find_parts(out)
    manifests = [read_manifest(p) for p in part_dirs]
    first = manifests[0]
    for directory, manifest in zip(part_dirs[1:], manifests[1:], strict=True):
        check_compatible(first, manifest, str(part_dirs[0]), str(directory))
    roots = check_identities(part_dirs, manifests)
    shards: list[ShardRecord] = []
    failures = []
    warnings = []
    for directory, manifest in zip(part_dirs, manifests, strict=True):
        if not manifest.source.get("finished", False):
            log.warning(
                "%s: this part has not finished; merging the %d videos it holds", directory, manifest.num_videos
            )
        prefix = os.path.relpath(directory, out)
        shards += [
            ShardRecord(**{**vars(r), "file": f"{prefix}/{r.file}", "root": shard_root(manifest, r) if roots else None})
            for r in manifest.shards
        ]
        failures += manifest.failures
        warnings += manifest.warnings
    merged = Manifest(
        extraction=first.extraction,
        classes=first.classes,
        pairs=first.pairs,
        shards=shards,
        failures=sorted(failures, key=lambda f: f.video),
        warnings=sorted(warnings, key=lambda w: w.video),
        tool_version=first.tool_version,
        source={
            **first.source,
            "parts": [os.path.relpath(p, out) for p in part_dirs],
            "finished": all(m.source.get("finished", False) for m in manifests),
            # several roots: each shard entry names its own, and no single root holds the merged cache's keys
            **({"videos": None, "roots": roots} if roots else {}),
        },
        storage=merged_storage(manifests),
    )
    for manifest in manifests:  # the parts' clip durations add up
        for seconds, count in manifest.durations.items():
            merged.durations[seconds] = merged.durations.get(seconds, 0) + count
    with full_disk_said(out, "merge"), DirectoryLock(out):  # the parts stay as they were: merging again is safe
        write_manifest(out, merged)
    return merged


def check_identities(part_dirs: Sequence[Path], manifests: Sequence[Manifest]) -> list[str | None]:
    """Refuse parts that are the same cache twice (a shard of equal sha256: the same directory, another path to
    it, or a copy) or that hold the same video of the same root; return the parts' distinct video roots when there
    are several (their shard entries then record them), else []."""
    holders: dict[str, tuple[int, str]] = {}  # shard sha256 -> the part (its position) and file that hold it
    for index, (directory, manifest) in enumerate(zip(part_dirs, manifests, strict=True)):
        for record in manifest.shards:
            holder, file = holders.setdefault(record.sha256, (index, record.file))
            if holder != index:
                other = part_dirs[holder]
                how = "given twice" if other.resolve() == directory.resolve() else f"a copy of {other}"
                raise ManifestError(
                    f"merge: {directory} is {how} ({directory / record.file} has the sha256 of {other / file}): "
                    "its clips would count twice; give each part once"
                )
    groups: dict[tuple[int, str | None], list[str]] = {}  # (part, root) -> its video keys
    for index, (directory, manifest) in enumerate(zip(part_dirs, manifests, strict=True)):
        for record in manifest.shards:
            keys = groups.setdefault((index, shard_root(manifest, record)), [])
            if (directory / record.file).is_file():  # a missing shard is verify's to report
                keys += read_shard_metadata(directory / record.file)["video"].tolist()
    names = [f"{part_dirs[index]}" for index, _ in groups]
    qualified_groups(list(groups.values()), [root for _, root in groups], names)  # same root, same key: refused
    distinct = list(dict.fromkeys(root for _, root in groups))
    return distinct if len(distinct) > 1 else []


def torchrun_environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def extract_distributed(videos: Any, out: str | Path, timeout_hours: float = 48.0, **options: Any) -> Any:
    """Run under ``torchrun``: rank r extracts part r of WORLD_SIZE; rank 0 merges after a barrier.

    Returns this rank's ExtractReport. A rank that fails does not reach the barrier: the others then stop
    waiting after ``timeout_hours``; re-run that part alone (``--num-parts N --part r``) and ``step-cache merge``.
    """
    import torch
    import torch.distributed as dist

    from step_cache.extraction.engine import extract

    environment = torchrun_environment()
    if environment is None:
        raise RuntimeError("extract_distributed needs torchrun (WORLD_SIZE > 1)")
    rank, world, local_rank = environment
    if options.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available():
        options["device"] = f"cuda:{local_rank % torch.cuda.device_count()}"
    dist.init_process_group("gloo", timeout=timedelta(hours=timeout_hours))
    try:
        report = extract(videos, out, **options, num_parts=world, part=rank)
        dist.barrier()
        if rank == 0:
            merged = merge(out, [part_directory(out, r, world) for r in range(world)])
            log.info("%s: merged %d parts: %d videos in %d shards", out, world, merged.num_videos, len(merged.shards))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return report


__all__ = [
    "PARTS_DIR",
    "extract_distributed",
    "find_parts",
    "merge",
    "part_directory",
    "part_of",
    "partition",
    "torchrun_environment",
]
