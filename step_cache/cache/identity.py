"""A video's identity across caches: its key, qualified by the videos root it came from where keys collide.

A key is a path relative to the videos root its cache was extracted from (manifest ``source.videos``), with
``#start-end`` for a segment; splits group clips by source file (the key without that suffix). Two datasets extracted
from different roots may share source files (approach/approach_000.mp4 in both). A *group* is a set of shards from
one root: a cache given to ``open_shards``, or one part of a cache merged from several roots (whose shard entries
record their ``root``, format 4). Every group that shares a source file with a group of another root has *all* its
keys qualified with its root, ``ROOT/KEY``, so each root's file stays one group and a group's names do not change
when a further one joins; other groups keep their keys. The same key from the same root in two groups (or one cache
given twice) is the same video twice: refused, since metrics average clips per video and splits keep a video on one
side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from step_cache.cache.integrity import ShardError
from step_cache.catalog import source_video


def normal_root(root: str | None) -> str | None:
    """A recorded videos root without trailing slashes ("/data/x/" and "/data/x" are one root)."""
    if not root:
        return None
    return root.rstrip("/") or "/"


def qualified_groups(keys: Sequence[Iterable[str]], roots: Sequence[str | None], names: Sequence[str]) -> set[int]:
    """The groups whose keys are to be qualified with their root. ``keys[g]``: the video keys of group g,
    ``roots[g]``: its normalised root (None: not recorded), ``names[g]``: how messages name it. Raises ShardError
    for a key of one root in two groups."""
    first_holder: dict[tuple[str | None, str], int] = {}
    file_roots: dict[str, dict[str | None, list[int]]] = {}  # source file -> root -> groups holding it
    for group, group_keys in enumerate(keys):
        root = roots[group]
        for key in dict.fromkeys(group_keys):
            holder = first_holder.setdefault((root, key), group)
            if holder != group:
                origin = f"both extracted from {root}" if root else "neither records its videos root"
                raise ShardError(
                    f"video {key} is in both {names[holder]} and {names[group]} ({origin}): that is the same video "
                    "twice; give each cache directory once and leave out caches that repeat another's videos"
                )
            holders = file_roots.setdefault(source_video(key), {}).setdefault(root, [])
            if group not in holders:
                holders.append(group)
    return {
        group
        for by_root in file_roots.values()
        if len(by_root) > 1
        for holders in by_root.values()
        for group in holders
        if roots[group]
    }


def qualify(key: str, root: str | None) -> str:
    """``ROOT/KEY``: the identity of a key of a qualified group."""
    return f"{str(root).rstrip('/')}/{key}"
