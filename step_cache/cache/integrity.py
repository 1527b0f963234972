"""Integrity before use: a shard whose bytes changed after it was published is never read.

Checksumming a whole cache at every ``train-probe`` would cost minutes on a large one, so the check is in two steps:

1. cheap, per shard: the file's size equals the manifest's, and its size, mtime and ctime equal those remembered
   when its checksum was last confirmed (at publish, by ``verify``, or by an earlier check);
2. full, only for a shard whose cheap check fails: its sha256 against the manifest's (the same checksum
   ``step-cache verify`` uses). A match is remembered, so a copied cache (same bytes, new times) costs one
   checksum pass; a mismatch is a ``ShardError`` naming the shard and ``step-cache verify``.

What was confirmed is remembered in a small sidecar beside the shards, ``.checked.json`` (one per folder that holds
shards, keyed by file name, replaced atomically), so a merged cache finds its parts' records where the parts wrote
them. ctime is in the fingerprint because nobody can set it: rewriting a file and restoring its mtime (``touch -r``)
still changes it. A folder that cannot be written to keeps working; its shards are then checksummed at each open.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from step_cache.cache.files import atomic_write_text, file_sha256
from step_cache.cache.manifest import ShardRecord
from step_cache.errors import StepCacheError

log = logging.getLogger(__name__)

CHECKED_NAME = ".checked.json"
_CHECKED_FORMAT = "step-cache-checked"


class ShardError(StepCacheError, ValueError):
    """A shard file that is missing, incomplete, or does not match its manifest."""


class IntegrityError(ShardError):
    """A shard whose bytes differ from what its manifest records (altered or truncated after extraction)."""


def _fingerprint(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns}


def _read_checked(folder: Path) -> dict[str, Any]:
    """The sidecar's entries ({} when absent or unreadable: then every shard is simply checksummed)."""
    try:
        data = json.loads((folder / CHECKED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CHECKED_FORMAT or not isinstance(data.get("shards"), dict):
        return {}
    return data["shards"]


def remember(paths_and_sums: list[tuple[Path, str]]) -> bool:
    """Record that each shard file has the given sha256 at its current size and times. Returns False (and logs)
    when a folder cannot be written to. Concurrent writers may drop each other's entries: that only costs a later
    checksum, never a wrong answer."""
    by_folder: dict[Path, list[tuple[Path, str]]] = {}
    for path, sha in paths_and_sums:
        by_folder.setdefault(path.parent, []).append((path, sha))
    saved = True
    for folder, entries in by_folder.items():
        shards = _read_checked(folder)
        for path, sha in entries:
            shards[path.name] = {"sha256": sha, **_fingerprint(path)}
        text = json.dumps({"format": _CHECKED_FORMAT, "shards": shards}, indent=1, sort_keys=True) + "\n"
        try:
            atomic_write_text(folder / CHECKED_NAME, text)
        except OSError as error:
            log.info("%s: cannot remember checked shards (%s); they are checksummed again next time", folder, error)
            saved = False
    return saved


def unconfirmed(directory: Path, records: list[ShardRecord]) -> list[tuple[Path, ShardRecord]]:
    """The shards whose cheap check fails: listed size or remembered fingerprint differ from the file's now.
    A missing file raises IntegrityError."""
    sidecars: dict[Path, dict[str, Any]] = {}
    stale = []
    for record in records:
        path = directory / record.file
        try:
            now = _fingerprint(path)
        except FileNotFoundError:
            raise IntegrityError(
                f"{path}: listed in the manifest but missing; run step-cache verify {directory}"
            ) from None
        if now["bytes"] != record.bytes:
            raise IntegrityError(
                f"{path}: {now['bytes']} bytes, but the manifest says {record.bytes}: the shard was truncated or "
                f"altered after extraction, so it is not read; run step-cache verify {directory}"
            )
        if path.parent not in sidecars:
            sidecars[path.parent] = _read_checked(path.parent)
        entry = sidecars[path.parent].get(path.name)
        if entry != {"sha256": record.sha256, **now}:
            stale.append((path, record))
    return stale


def check_shards(directory: str | Path, records: list[ShardRecord], progress: bool = False) -> int:
    """Raise IntegrityError for the first shard whose bytes differ from the manifest's record; checksum only the
    shards the cheap check cannot vouch for, and remember those that match. Returns how many were checksummed."""
    directory = Path(directory)
    stale = unconfirmed(directory, records)
    if not stale:
        return 0
    total = sum(record.bytes for _, record in stale)
    log.info(
        "%s: checksumming %d shard(s) (%.1f GiB) not checked since they were written or copied; done once",
        directory, len(stale), total / 2**30,
    )  # fmt: skip
    confirmed = []
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="checking shards", disable=not progress, leave=False)
    try:
        for path, record in stale:
            if file_sha256(path) != record.sha256:
                remember(confirmed)  # keep what was confirmed before the bad shard
                raise IntegrityError(
                    f"{path}: its sha256 differs from the manifest's: the shard was altered after extraction, so it "
                    f"is not read; run step-cache verify {directory} (then restore or re-extract the shard)"
                )
            confirmed.append((path, record.sha256))
            bar.update(record.bytes)
    finally:
        bar.close()
    remember(confirmed)
    return len(confirmed)
