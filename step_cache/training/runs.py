"""The files of a training run directory, written crash-safely (write a temporary file, then rename).

- ``config.json``: everything needed to reproduce the run (hyperparameters, probe options, cache identity).
- ``metrics.jsonl``: one JSON line per completed epoch (appended between commits, ``run_commits.py``).
- ``best.pt`` / ``last.pt``: probe weights only (a state dict of tensors), loadable with ``weights_only=True``.
- ``last_state.pt``: everything ``--resume`` needs (weights, best weights, optimizer, scheduler, RNG, epoch,
  history). It is the commit point (after the first and last epoch and every ~30 s: ``run_commits.py``):
  ``last.pt``, ``best.pt`` and ``metrics.jsonl`` are written after it and rewritten from it on resume.
- ``metrics.json``: final metrics of the best checkpoint, headline first (``metrics_file.py``).
- ``checkpoints.json``: the sha256 of every checkpoint the run wrote (``run_checkpoints.py``), written after the
  checkpoint; a checkpoint that differs (copied in from another run, edited) is refused by every consumer.
- ``failed.json``: written when the run diverged (``run_status.py``); every consumer refuses the run with its reason.
- ``.lock``: held while a process writes the run (``run_lock.py``): one writer per run directory.

Checkpoints are serialised in memory and written as bytes: ``torch.save`` to a path names the archive's root folder
after the (temporary) file, so identical runs would otherwise write different bytes.

Every JSON file is strict JSON (RFC 8259 has no NaN or Infinity): a non-finite number is refused with a
``NonFiniteValueError`` naming the file and the key, before anything is written. A diverged run must stop before
its numbers reach a file (``epoch_loop.NonFiniteLossError``); if one slips through, the file is not written rather
than written unreadable by strict parsers.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from step_cache.cache.files import atomic_write_bytes, atomic_write_text
from step_cache.checkpoints import CheckpointError, load_state_dict_file
from step_cache.errors import StepCacheError
from step_cache.interface import option, switch
from step_cache.training.metrics_file import upgrade
from step_cache.training.run_record import record_differences, recorded_holdout
from step_cache.training.splits import HOLDOUT_GROUPS

log = logging.getLogger(__name__)

CONFIG = "config.json"
EPOCH_LOG = "metrics.jsonl"
FINAL_METRICS = "metrics.json"
BEST = "best.pt"
LAST = "last.pt"
STATE = "last_state.pt"
CHECKPOINT_SUMS = "checkpoints.json"
FAILED = "failed.json"
# config.json first: a removal cut short leaves no config, so no command takes the remains for a run.
RUN_FILES = (CONFIG, EPOCH_LOG, FINAL_METRICS, BEST, LAST, STATE, CHECKPOINT_SUMS, FAILED)
SEEDS_DIR = "seeds"  # a --seeds run's per-seed files: SEEDS_DIR/seed-<s>/


def seed_dir(run_dir: Path, seed: int) -> Path:
    return run_dir / SEEDS_DIR / f"seed-{seed}"


class RunError(StepCacheError, ValueError):
    """A run directory that is missing, incomplete, or does not match what was asked of it."""


class NonFiniteValueError(StepCacheError, ValueError):
    """JSON data holding NaN or ±Infinity, which strict JSON cannot represent."""


def non_finite_keys(data: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """(key path, value) of every non-finite float in ``data`` (dicts, lists, tuples), e.g. ``("test.loss", nan)``
    or ``("trials[3].value", inf)``."""
    if isinstance(data, float):
        if not math.isfinite(data):
            yield path or "(the value itself)", data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from non_finite_keys(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            yield from non_finite_keys(value, f"{path}[{index}]")


def strict_json(data: Any, where: str, **options: Any) -> str:
    """``json.dumps(data, allow_nan=False)``, with a ``NonFiniteValueError`` that names ``where`` (the file) and
    the key path of each non-finite number instead of json's bare "Out of range float values"."""
    bad = list(non_finite_keys(data))
    if bad:
        shown = ", ".join(f"{key} = {value}" for key, value in bad[:5])
        if len(bad) > 5:
            shown += f" and {len(bad) - 5} more"
        raise NonFiniteValueError(
            f"{where}: not written: non-finite number(s) {shown}; JSON has no NaN/Infinity (did training diverge?)"
        )
    return json.dumps(data, allow_nan=False, **options)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON, atomically; non-finite numbers are refused before anything is written."""
    atomic_write_text(path, strict_json(data, str(path), indent=2) + "\n")


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if not Path(run_dir).is_dir():
        raise RunError(f"{run_dir}: run directory does not exist")
    if not path.is_file():
        raise RunError(f"{path}: missing; {run_dir} is not a train-probe run directory (or its run never started)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"{path}: unreadable run config ({error})") from None


def read_final_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """A finished run's ``metrics.json`` as format version 2 (``metrics_file.upgrade`` reads version 1); None
    before the run finished."""
    path = Path(run_dir) / FINAL_METRICS
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # cut short or edited: the committed state can write it again
        raise RunError(
            f"{path}: unreadable metrics ({error}); delete it and repeat the run's command with {switch('resume')} "
            "to write it again from the run's committed state"
        ) from None
    if "format_version" not in metrics and "seeds" not in metrics:  # a version-1 one-seed file: config.json has it
        with contextlib.suppress(RunError, KeyError, TypeError):
            return upgrade(metrics, int(read_config(run_dir)["config"]["seed"]), str(path))
    return upgrade(metrics, path=str(path))


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` as bytes. Saved to a buffer, the archive's root folder is always "archive"; saved to a
    path it is the file's stem (a temporary name holding the pid), which made identical runs' files differ."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _atomic_torch_save(obj: Any, path: Path) -> bytes:
    data = torch_bytes(obj)
    atomic_write_bytes(path, data)
    return data


def weights_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_weights(module: torch.nn.Module, path: Path) -> bytes:
    """Write ``module``'s weights to ``path`` atomically; returns the bytes written (to checksum them)."""
    return _atomic_torch_save(weights_of(module), path)


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load a weights file into ``module``; a file from another probe shape is refused with a clear message."""
    state = load_state_dict_file(path)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: does not fit this probe ({str(error).splitlines()[0]})") from None


def save_state(state: dict[str, Any], path: Path) -> bytes:
    return _atomic_torch_save(state, path)


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a damaged state file: say which and stop
        raise RunError(f"{path}: unreadable resume state ({str(error).splitlines()[0][:200]})") from None


def write_epoch_log(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` from the committed epoch records (at a commit, and on resume, which so drops the
    lines appended after the last commit); strict JSON lines, checked all before the file is touched."""
    path = run_dir / EPOCH_LOG
    lines = [strict_json(record, f"{path}: line {number}") + "\n" for number, record in enumerate(records, 1)]
    atomic_write_text(path, "".join(lines))


def read_epoch_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl``. Its lines are appended live between commits, so a full disk or a kill
    mid-append can leave the last one torn (no newline): it is dropped, as ``--resume`` drops lines after the last
    commit anyway. A damaged line elsewhere is a RunError naming it."""
    path = Path(run_dir) / EPOCH_LOG
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise RunError(f"{path}: line {number} is not JSON (the file was edited or damaged)") from None
    return records


def clear_run(run_dir: Path) -> None:
    """Remove the files of a previous run (``--overwrite``), leaving anything else in the directory alone."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def refuse_existing_run(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """The cheap checks, done before any slow work: a run directory is never overwritten by accident."""
    if resume and overwrite:
        raise RunError(f"{switch('resume')} and {switch('overwrite')} exclude each other")
    if (run_dir / "trials.json").is_file():  # a sweep's directory (its best run lives in best-run/)
        raise RunError(f"{run_dir}: holds a sweep (trials.json); choose another {option('out')}")
    if (run_dir / CONFIG).is_file() and not (resume or overwrite):
        raise RunError(
            f"{run_dir}: already holds a run ({CONFIG}); pass {switch('resume')} to continue it or "
            f"{switch('overwrite')} to start over"
        )


def resumed_holdout(run_dir: Path, resume: bool) -> str:
    """The val hold-out rule a run follows: with ``resume``, the one the stored run used (``recorded_holdout``: a
    run from before groups keeps its per-file hold-out, so it resumes on the val videos it started with), else the
    current rule."""
    if resume and (run_dir / CONFIG).is_file():
        return recorded_holdout(read_config(run_dir), str(run_dir / CONFIG))
    return HOLDOUT_GROUPS


def check_same_settings(run_dir: Path, record: dict[str, Any]) -> None:
    """Refuse to resume ``run_dir`` when its stored config differs from ``record`` (execution-only fields aside)."""
    stored = read_config(run_dir)
    differences = record_differences(stored, record)
    if differences:
        # A run from before early stopping reads as early_stop off: its original command now needs --no-early-stop.
        trained_without = stored.get("config", {}).get("early_stop", False) is False
        hint = (
            f" (it was trained without early stopping: add {switch('early_stop', False)})"
            if trained_without and any("early_stop" in difference for difference in differences)
            else ""
        )
        raise RunError(
            f"{run_dir}: cannot resume with different settings ({'; '.join(differences)}); "
            f"repeat the original command with {switch('resume')}{hint}, or use a new {option('out')}"
        )


def open_run_dir(run_dir: Path, record: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """Start a run (clear old run files, write config.json) or, with ``resume``, check the stored config against
    ``record`` and return the saved state (None when no epoch was completed: the run starts over)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and (run_dir / CONFIG).is_file():
        check_same_settings(run_dir, record)
        if (run_dir / STATE).is_file():
            return load_state(run_dir / STATE)
        log.info("%s: no completed epoch to resume from; starting from the beginning", run_dir)
    elif resume:  # a mistyped --out would otherwise start over silently, as if it had resumed
        log.warning("%s: no run to resume here (no %s); starting a new run", run_dir, CONFIG)
    clear_run(run_dir)
    write_json(run_dir / CONFIG, record)
    return None
