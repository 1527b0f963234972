"""Layer specs: which backbone blocks a cache stores (``extract --layers``) or keeps (``compact --layers``).

Blocks are counted from 0, as timm's ``forward_intermediates(indices=...)`` and the anchors' ``out_layers`` /
``n_last_blocks`` count them: block 11 is the last of a 12-block ViT. A spec is ``last`` (the last block only, with
no layer axis: every cache before format 5), ``lastN`` (the last N blocks) or a comma list of block indices, where
a negative index counts from the end (``-1`` is the last block).
"""

from __future__ import annotations

import re

from step_cache.errors import InputError
from step_cache.interface import option

LAST = "last"
_LAST_N = re.compile(r"^last(\d+)$")


def check_spec(spec: str, name: str = "layers") -> str:
    """``spec`` normalised (lower case, no spaces) once its form is right (its blocks need the model)."""
    text = str(spec).replace(" ", "").lower()
    parse_blocks(text, depth=1 << 30, name=name)  # any index is inside a model this deep: only the form is checked
    return text


def parse_blocks(spec: str, depth: int, name: str = "layers") -> tuple[int, ...] | None:
    """The ascending block indices ``spec`` names in a model of ``depth`` blocks; None for ``last`` (no layer
    axis). InputError names the option (``name``) and the problem."""
    text = str(spec).strip().lower()
    if text == LAST:
        return None
    if match := _LAST_N.match(text):
        count = int(match.group(1))
        if count < 1:  # said apart: check_spec checks the form against no real depth
            raise InputError(f"{option(name, spec)}: lastN takes N >= 1 (the last N blocks)")
        if count > depth:
            raise InputError(f"{option(name, spec)}: the model has {depth} blocks, so lastN takes N in 1..{depth}")
        return tuple(range(depth - count, depth))
    try:
        given = [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(
            f"{option(name, spec)}: expected last, lastN or comma-separated block indices (0-based, negative from the "
            "end), e.g. last4 or 8,10,11"
        ) from None
    blocks = [index + depth if index < 0 else index for index in given]
    outside = [g for g, b in zip(given, blocks, strict=True) if not 0 <= b < depth]
    if outside:
        raise InputError(f"{option(name, spec)}: block(s) {outside} outside the model's blocks 0..{depth - 1}")
    if len(set(blocks)) != len(blocks):
        raise InputError(f"{option(name, spec)}: a block is named twice")
    return tuple(sorted(blocks))


def kept_layers(spec: str, stored: tuple[int, ...] | None, name: str = "layers") -> tuple[int, ...]:
    """Positions into a cache's ``stored`` layers that ``spec`` keeps: ``lastN`` the last N stored layers, or a
    comma list of block indices, each of which must be stored. ``last`` on a cache without a layer axis keeps its
    one layer."""
    if stored is None:
        if str(spec).strip().lower() in (LAST, "last1"):
            return (0,)
        raise InputError(f"{option(name, spec)}: this cache holds the last block only (no layer axis)")
    text = str(spec).strip().lower()
    if text == LAST:
        return (len(stored) - 1,)
    if match := _LAST_N.match(text):
        count = int(match.group(1))
        if not 1 <= count <= len(stored):
            raise InputError(
                f"{option(name, spec)}: lastN takes N in 1..{len(stored)}; the cache stores {len(stored)} layers "
                f"{list(stored)}"
            )
        return tuple(range(len(stored) - count, len(stored)))
    try:
        blocks = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise InputError(f"{option(name, spec)}: expected last, lastN or comma-separated block indices") from None
    missing = [block for block in blocks if block not in stored]
    if missing:
        raise InputError(f"{option(name, spec)}: block(s) {missing} not in the cache, which stores {list(stored)}")
    return tuple(stored.index(block) for block in blocks)
