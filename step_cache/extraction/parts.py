"""Deterministic parts of a catalogue: which part a video belongs to, and the directory a part is extracted into.

The piece that both the engine (``--num-parts N --part I``) and the distributed driver/merge need; it imports
neither, so the arrows run one way: distributed -> engine -> parts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from step_cache.catalog import VideoItem
from step_cache.errors import InputError
from step_cache.interface import option

PARTS_DIR = "parts"


def part_of(key: str, num_parts: int) -> int:
    """Stable part of an item: the same on every machine, run and Python version (not ``hash()``)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % num_parts


def partition(items: Sequence[VideoItem], num_parts: int, part: int) -> list[VideoItem]:
    if num_parts < 1 or not 0 <= part < num_parts:
        raise InputError(
            f"{option('part')} must be in 0..{num_parts - 1} for {option('num_parts', num_parts)}, got {part}"
        )
    return [item for item in items if part_of(item.key, num_parts) == part]


def part_directory(out: str | Path, part: int, num_parts: int) -> Path:
    return Path(out) / PARTS_DIR / f"part-{part:03d}-of-{num_parts:03d}"
