"""A manifest that carries the checksum of its own content, so that a hand edit is caught before the cache is used.

The shards' checksums are in the manifest, but nothing checked the manifest itself: two class names swapped, a
shard entry removed or a label renamed in ``manifest.json`` were used as written, and figures silently changed.
Every manifest step-cache writes therefore holds ``manifest_sha256``: the sha256 of the manifest's JSON without
that field, serialised canonically (sorted keys, ``json.dumps`` defaults), so the check does not depend on the
file's indentation. Readers recompute it; a mismatch stops them with a one-line message naming the file. An older
cache without the field is still read, with one warning per manifest (``docs/shard-format.md``). Older step-cache
versions ignore the field, so a sealed cache stays readable by them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

log = logging.getLogger(__name__)

SEAL_KEY = "manifest_sha256"
_warned: set[str] = set()  # manifests already warned about (once per process and file)


def content_sha256(data: dict[str, Any]) -> str:
    """sha256 of a manifest dict without its seal, in canonical JSON."""
    unsealed = {key: value for key, value in data.items() if key != SEAL_KEY}
    return hashlib.sha256(json.dumps(unsealed, sort_keys=True).encode()).hexdigest()


def seal(data: dict[str, Any]) -> dict[str, Any]:
    """The manifest dict with its seal added (last, so the file reads as before)."""
    return {**{key: value for key, value in data.items() if key != SEAL_KEY}, SEAL_KEY: content_sha256(data)}


def seal_problem(data: dict[str, Any], origin: str) -> str | None:
    """Why a manifest dict as read from ``origin`` cannot be trusted (None when its seal matches). A manifest
    without a seal (written before step-cache sealed them) passes, with one warning."""
    recorded = data.get(SEAL_KEY)
    if recorded is None:
        if origin not in _warned:
            _warned.add(origin)
            log.warning(
                "%s: written by an older step-cache without manifest_sha256, so edits to it cannot be detected; it is "
                "used as is",
                origin,
            )
        return None
    if recorded != content_sha256(data):
        return (
            f"{origin}: edited after step-cache wrote it (its manifest_sha256 does not match its content: class "
            "list, shard entries, labels or settings changed), so the cache is not used; restore the manifest or "
            "re-extract"
        )
    return None
