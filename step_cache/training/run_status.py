"""Whether a run can be used, and the one place every consumer asks: ``usable_checkpoint``.

A run that diverged is a failed run: ``train_probe`` writes ``failed.json`` with the reason before it raises, and
``evaluate``, ``predict`` (both modes), ``timeline``, ``Recognizer`` and ``report`` refuse it with that reason
(its ``best.pt``, from an epoch before the divergence, may hold absurd weights that still give a top-1). A failed
run is not resumed (it would diverge again): ``--overwrite`` starts it over and removes the mark.

A run without ``metrics.json`` has not finished: either a live process still trains it (it holds ``RUN/.lock``) or
its process stopped (killed, interrupted, out of space), and ``--resume`` continues it from its last commit. Every
consumer says which (``unfinished``), so nobody is sent to ``--overwrite`` for a run that can go on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from step_cache.cache.files import now_iso
from step_cache.cache.locking import holder
from step_cache.interface import option, switch
from step_cache.training import runs
from step_cache.training.run_checkpoints import verify_checkpoint

log = logging.getLogger(__name__)


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
            f"{run_dir}: the run failed ({reason}); it has no usable checkpoint — train it again with "
            f"{switch('overwrite')}"
        )


def refuse_failed_resume(run_dir: Path) -> None:
    reason = failure(run_dir)
    if reason is not None:
        raise FailedRunError(
            f"{run_dir}: the run failed ({reason}); {switch('resume')} would repeat it — start over with "
            f"{switch('overwrite')} (and, for a divergence, a lower {option('lr')})"
        )


def unfinished(run_dir: str | Path) -> str | None:
    """``"RUN: the run is still training (pid P on H, since T)"`` or ``"RUN: the run is unfinished (N epoch(s) ...);
    continue it with the command that started it and --resume"``; None for a finished run (``metrics.json``)."""
    run_dir = Path(run_dir)
    if (run_dir / runs.FINAL_METRICS).is_file():
        return None
    owner = holder(run_dir)
    if owner is not None:
        return (f"{run_dir}: the run is still training (pid {owner.get('pid')} on {owner.get('host')}, since "
                f"{owner.get('since')}); its final figures come when it finishes")  # fmt: skip
    epochs = len(runs.read_epoch_log(run_dir))
    done = f"{epochs} epoch(s) recorded" if epochs else "no epoch recorded"
    return (f"{run_dir}: the run is unfinished ({done}; its process stopped): continue it with the command that "
            f"started it and {switch('resume')}")  # fmt: skip


def warn_if_unfinished(run_dir: str | Path) -> str | None:
    """Log ``unfinished`` as a warning for a run whose best checkpoint is used before it finished; returns it."""
    note = unfinished(run_dir)
    if note:
        log.warning("%s; these figures are from its best epoch so far", note)
    return note


def usable_checkpoint(run_dir: str | Path, weights: str = runs.BEST) -> Path:
    """The path of ``run_dir``'s checkpoint ``weights``, after refusing a failed run, a missing checkpoint (saying
    whether the run finished, still trains, or stopped unfinished: then ``--resume``) and one whose bytes the run
    did not write."""
    run_dir = Path(run_dir)
    refuse_failed(run_dir)
    path = run_dir / weights
    if not path.is_file():
        note = unfinished(run_dir)
        if note is None:
            restore = ""
            if weights == runs.BEST:
                restore = f" ({switch('resume')} writes best.pt again from the run's committed state)"
            raise runs.RunError(
                f"{path}: missing, but the run finished ({runs.FINAL_METRICS}); the checkpoint was deleted or moved: "
                f"put it back, re-run the command that trained it with {switch('resume')}{restore}, or train again "
                f"with {switch('overwrite')}"
            )
        raise runs.RunError(f"{path}: missing; {note.removeprefix(f'{run_dir}: ')}")
    verify_checkpoint(run_dir, path)
    return path
