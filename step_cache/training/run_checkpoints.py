"""Checkpoints bound to their run: the run records the sha256 of every checkpoint it writes in
``checkpoints.json``, and a checkpoint is only loaded when its bytes hash to the recorded value.

Same shapes are not the same run: a ``best.pt`` copied in from another run, or one whose head weights were edited,
loads into the probe without complaint and gives other figures. The checksum catches both. ``checkpoints.json``
also records the run's identity (``run_identity``: its settings' sha256 and creation time), so a ``best.pt``
copied in *together with* its ``checkpoints.json`` is refused as well.

Order of writes: the checkpoint first (atomic rename), then its entry (atomic rename of ``checkpoints.json``). A
kill between the two leaves a checkpoint whose entry is the previous one's: it is refused until the run is
resumed, and ``--resume`` rewrites (and re-records) every checkpoint a kill can have left half-recorded, from the
committed state (``trainer._Run.restore``, ``seeds._write``). The entry is never written before the file, so an
entry always names bytes that were, at some point, this run's own checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from step_cache.interface import switch
from step_cache.training import runs

log = logging.getLogger(__name__)

# Keys of checkpoints.json are paths relative to the run directory (e.g. "best.pt", "seeds/seed-1/best.pt").


class CheckpointMismatchError(runs.RunError):
    """A checkpoint whose bytes are not those its run recorded (replaced, edited), or that no record covers."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key(run_dir: Path, path: Path) -> str:
    return path.relative_to(run_dir).as_posix()


def run_identity(run_dir: Path) -> dict[str, Any] | None:
    """Which run this is: the sha256 of its settings and data (``config.json``'s ``config`` and ``data``, which
    never change once written) and its creation time. None without a readable config.json."""
    try:
        record_ = runs.read_config(run_dir)
    except (OSError, ValueError, runs.RunError):
        return None
    settings = json.dumps({"config": record_.get("config"), "data": record_.get("data")}, sort_keys=True)
    return {"config_sha256": sha256(settings.encode()), "created": record_.get("created")}


def _read(run_dir: Path) -> dict[str, Any]:
    path = run_dir / runs.CHECKPOINT_SUMS
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointMismatchError(
            f"{path}: unreadable checkpoint record ({error}); retrain the run with {switch('overwrite')}"
        ) from None
    return content if isinstance(content, dict) else {}


def read_sums(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The recorded checkpoints ({relative path: {"sha256", "bytes"}}); empty when none is recorded."""
    return _read(run_dir).get("checkpoints", {})


def record(run_dir: Path, path: Path, data: bytes) -> None:
    """Record ``data`` (just written to ``path``) as the run's checkpoint at ``path``, under the run's identity.
    One writer per run directory (``run_lock``), so read-modify-write is safe."""
    sums = read_sums(run_dir)
    sums[_key(run_dir, path)] = {"sha256": sha256(data), "bytes": len(data)}
    runs.write_json(run_dir / runs.CHECKPOINT_SUMS, {"run": run_identity(run_dir),
                                                     "checkpoints": dict(sorted(sums.items()))})  # fmt: skip


def save_checkpoint(run_dir: Path, path: Path, weights: dict[str, torch.Tensor] | torch.nn.Module) -> None:
    """Write ``weights`` (a state dict, or a module's) to ``path`` inside ``run_dir``, then record its checksum."""
    module = isinstance(weights, torch.nn.Module)
    data = runs.save_weights(weights, path) if module else runs.save_state(weights, path)
    record(run_dir, path, data)


def verify_checkpoint(run_dir: Path, path: Path) -> None:
    """Refuse ``path`` unless its bytes are those ``run_dir`` recorded for it. The caller has checked it exists."""
    key = _key(run_dir, path)
    content = _read(run_dir)
    recorded, own = content.get("run"), run_identity(run_dir)
    if recorded is not None and own is not None and recorded != own:  # (records before identities: none to check)
        raise CheckpointMismatchError(
            f"{path}: {runs.CHECKPOINT_SUMS} belongs to another run (created {recorded.get('created')}, settings "
            f"sha256 {str(recorded.get('config_sha256'))[:12]}…), not this one (created {own.get('created')}, "
            f"{str(own.get('config_sha256'))[:12]}…): the checkpoint and its record were copied from elsewhere; put "
            f"the run's own files back or retrain with {switch('overwrite')}"
        )
    entry = content.get("checkpoints", {}).get(key)
    if entry is None:
        raise CheckpointMismatchError(
            f"{path}: {run_dir / runs.CHECKPOINT_SUMS} records no checksum for {key}, so it cannot be tied to this "
            f"run (a run written by an older step-cache, or a file put there by hand); retrain with "
            f"{switch('overwrite')}, or continue an interrupted run with {switch('resume')}"
        )
    actual = sha256(path.read_bytes())
    if actual != entry.get("sha256"):
        raise CheckpointMismatchError(
            f"{path}: not the checkpoint this run wrote (sha256 {actual[:12]}…, recorded "
            f"{str(entry.get('sha256'))[:12]}… in {runs.CHECKPOINT_SUMS}): it was replaced or edited; put the run's "
            f"own file back or retrain with {switch('overwrite')} (a run interrupted while saving: continue it with "
            f"{switch('resume')})"
        )


def restore_best(run_dir: Path, best_weights: dict[str, torch.Tensor] | None, copy: Path | None = None) -> None:
    """``--resume`` of a finished run whose ``best.pt`` was deleted: write it again from the committed state's best
    weights (one seed) or from ``copy``, a recorded checkpoint with the same bytes (``--seeds``: the first seed's
    ``seeds/seed-<s>/best.pt``); a RunError says so when neither holds them."""
    path = run_dir / runs.BEST
    if path.is_file():
        return
    if best_weights is not None:
        save_checkpoint(run_dir, path, best_weights)
    elif copy is not None and copy.is_file():
        verify_checkpoint(run_dir, copy)  # only the run's own bytes are copied
        data = copy.read_bytes()
        runs.atomic_write_bytes(path, data)
        record(run_dir, path, data)
    else:
        raise runs.RunError(
            f"{path}: missing, and the run's committed state does not hold its best weights: put the file back or "
            f"train again with {switch('overwrite')}"
        )
    log.info("%s: restored from the run's committed state", path)
