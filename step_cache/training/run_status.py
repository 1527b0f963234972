"""Whether a run can be used, and the one place every consumer asks: ``usable_checkpoint``.

A run that diverged is a failed run: ``train_probe`` writes ``failed.json`` with the reason before it raises, and
``evaluate``, ``predict`` (both modes), ``timeline``, ``Recognizer`` and ``report`` refuse it with that reason
(its ``best.pt``, from an epoch before the divergence, may hold absurd weights that still give a top-1). A failed
run is not resumed (it would diverge again): ``--overwrite`` starts it over and removes the mark.
"""

from __future__ import annotations

import json
from pathlib import Path

from step_cache.cache.files import now_iso
from step_cache.training import runs
from step_cache.training.run_checkpoints import verify_checkpoint


class FailedRunError(runs.RunError):
    """The run diverged (or otherwise failed for good); nothing may use its checkpoints or figures."""


def mark_failed(run_dir: Path, reason: str) -> None:
    """Record that the run in ``run_dir`` failed, and why (one line), atomically."""
    if run_dir.is_dir():
        runs.write_json(run_dir / runs.FAILED, {"reason": reason.splitlines()[0] if reason else "", "at": now_iso()})


def failure(run_dir: str | Path) -> str | None:
    """The recorded reason the run failed, or None when it is not marked failed."""
    path = Path(run_dir) / runs.FAILED
    if not path.is_file():
        return None
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("reason") or "no reason recorded")
    except (OSError, ValueError, AttributeError):
        return f"{path} is unreadable"


def refuse_failed(run_dir: str | Path) -> None:
    reason = failure(run_dir)
    if reason is not None:
        raise FailedRunError(
            f"{run_dir}: the run failed ({reason}); it has no usable checkpoint — train it again with --overwrite"
        )


def refuse_failed_resume(run_dir: Path) -> None:
    reason = failure(run_dir)
    if reason is not None:
        raise FailedRunError(
            f"{run_dir}: the run failed ({reason}); --resume would repeat it — start over with --overwrite "
            "(and, for a divergence, a lower --lr)"
        )


def usable_checkpoint(run_dir: str | Path, weights: str = runs.BEST) -> Path:
    """The path of ``run_dir``'s checkpoint ``weights``, after refusing a failed run, a missing checkpoint (saying
    whether the run finished, trained some epochs, or none) and one whose bytes the run did not write."""
    run_dir = Path(run_dir)
    refuse_failed(run_dir)
    path = run_dir / weights
    if not path.is_file():
        if (run_dir / runs.FINAL_METRICS).is_file():
            raise runs.RunError(
                f"{path}: missing, but the run finished ({runs.FINAL_METRICS}); the checkpoint was deleted or moved: "
                "put it back or train again with --overwrite"
            )
        epochs = len(runs.read_epoch_log(run_dir))
        if epochs:
            raise runs.RunError(
                f"{path}: missing, though the run completed {epochs} epoch(s); the checkpoint was deleted or moved: "
                "put it back or train again with --overwrite"
            )
        raise runs.RunError(f"{path}: missing; the run has not completed an epoch yet")
    verify_checkpoint(run_dir, path)
    return path
