"""Where a sweep's study lives, how many of its trials are done, and how the trials of a dead worker are re-queued.

- **Default**: an Optuna journal file, ``OUT/study.journal``, written only by the process that holds ``OUT/.lock``
  (``cache.locking.DirectoryLock``). A RUNNING trial found there on start therefore belongs to a process that died
  (kill -9, power loss): it is failed and re-queued at once.
- **``--storage URL``** (SQLite, PostgreSQL, MySQL): Optuna's ``RDBStorage`` with its heartbeat. Each worker
  records a heartbeat for the trials it trains every ``heartbeat`` seconds; a RUNNING trial whose heartbeat is older
  than ``GRACE_FACTOR`` × ``heartbeat`` (database clock) is failed by whichever worker sees it first (the state
  change is atomic, so only one does) and re-queued as a WAITING copy with the same parameters.

**Counting.** ``--trials`` counts trials with an outcome: COMPLETE, PRUNED, or FAIL with a ``failure`` (diverged).
A trial failed because its worker died (or was interrupted) has no outcome: its WAITING copy replaces it, so
it never counts twice. Trials asked past the budget in a race are ``surplus``, and trials that asked a configuration
another trial holds are ``duplicate_of`` it (``distinct``): neither ever counts.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from step_cache.errors import InputError
from step_cache.interface import option

log = logging.getLogger(__name__)

JOURNAL = "study.journal"
DEFAULT_STUDY = "sweep"
GRACE_FACTOR = 3  # missed heartbeats before a trial is judged dead: tolerates a busy worker or database
OUTCOME = (TrialState.COMPLETE, TrialState.PRUNED)
DUPLICATE = "duplicate_of"  # user attribute of a trial skipped because another trial holds its configuration


@dataclass
class SweepStorage:
    storage: optuna.storages.BaseStorage
    label: str  # "journal" or the URL without its password: recorded in trials.json
    shared: bool  # other workers may hold RUNNING trials (an RDB); the journal is this process's alone
    heartbeat: int | None = None  # seconds; RDB only

    def beats(self, trial_ids: Iterable[int]) -> contextlib.AbstractContextManager:
        """``with store.beats(ids):`` records the trials' heartbeats while they train (a no-op for the journal)."""
        if self.heartbeat is None:
            return contextlib.nullcontext()
        return _heartbeats(self.storage, list(trial_ids), self.heartbeat)


class _UnlockedJournal:
    """The journal's own lock is a lock *file*, which a killed process leaves behind (the next run then waits
    for its grace period). ``OUT/.lock`` already makes this process the journal's only writer, so none is needed."""

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


def _repair_journal(path: Path) -> None:
    """A write cut short by a kill leaves a last line without its newline; Optuna would append after it and then
    refuse the whole file. Drop the torn record (it was never acknowledged to the trial that wrote it)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    log.warning("%s: dropping a record cut short by an interrupted write (%d bytes)", path, len(data) - keep)
    with path.open("r+b") as handle:
        handle.truncate(keep)


def _journal(path: Path) -> optuna.storages.BaseStorage:
    journal = getattr(optuna.storages, "journal", None)
    backend = getattr(journal, "JournalFileBackend", None)  # optuna >= 4.0
    if backend is None:  # optuna 3.x
        backend = optuna.storages.JournalFileStorage
    return optuna.storages.JournalStorage(backend(str(path), lock_obj=_UnlockedJournal()))


class _HeartbeatRDBStorage(optuna.storages.RDBStorage):
    """RDBStorage whose stale trials include RUNNING ones that never recorded a heartbeat (their worker died
    between asking them and its first beat, or they predate heartbeats) once they are older than the grace period."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        cutoff = datetime.now() - timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 0))
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        old = [
            t._trial_id for t in running if t._trial_id not in stale and t.datetime_start and t.datetime_start < cutoff
        ]
        if not old:
            return stale
        try:  # Optuna's heartbeat table; private, so a changed schema only loses this refinement
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session

            with _create_scoped_session(self.scoped_session) as session:
                beating = {t for t in old if models.TrialHeartbeatModel.where_trial_id(t, session) is not None}
        except (ImportError, AttributeError):
            return stale
        return stale + [t for t in old if t not in beating]


def _rdb(url: str, heartbeat: int, attempts: int = 6) -> optuna.storages.BaseStorage:
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError  # an Optuna dependency

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is "experimental" in Optuna's words
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return _HeartbeatRDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=GRACE_FACTOR * heartbeat
                )
        except (IntegrityError, OperationalError, ProgrammingError):
            # Workers started together on a new database race to create its tables (PostgreSQL may report the
            # loser's CREATE as a duplicate type); the loser retries and then finds them made.
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
    raise AssertionError("unreachable")


def redact(url: str) -> str:
    """The URL without its password (it goes into trials.json and messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse: RDBStorage will say so
        return url


def open_storage(url: str | None, out: Path, heartbeat: int) -> SweepStorage:
    """The journal in ``out`` (``url`` None; the caller holds ``out``'s lock) or the RDB at ``url``."""
    if heartbeat < 1:
        raise InputError(f"{option('heartbeat')} must be a whole number of seconds >= 1, got {heartbeat}")
    if url is None:
        path = out / JOURNAL
        _repair_journal(path)
        return SweepStorage(_journal(path), "journal", shared=False)
    return SweepStorage(_rdb(url, heartbeat), redact(url), shared=True, heartbeat=heartbeat)


@contextlib.contextmanager
def _heartbeats(storage: optuna.storages.BaseStorage, trial_ids: list[int], interval: int) -> Iterator[None]:
    stop = threading.Event()

    def record() -> None:
        for trial_id in trial_ids:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as error:  # noqa: BLE001 - a database hiccup: the next beat may get through
                log.warning("heartbeat of a trial not recorded (%s); retrying in %d s", error, interval)

    def beat() -> None:
        while not stop.wait(interval):
            record()

    record()  # the first beat before any training, so the trial is watched from the start
    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def is_skipped(trial: FrozenTrial) -> bool:
    """Told FAIL without running: asked past the budget (``surplus``) or a configuration already held."""
    return bool(trial.user_attrs.get("surplus")) or DUPLICATE in trial.user_attrs


def has_outcome(trial: FrozenTrial) -> bool:
    """COMPLETE, PRUNED or FAIL with a recorded failure (diverged): the trials ``--trials`` counts."""
    if is_skipped(trial):
        return False
    return trial.state in OUTCOME or (trial.state == TrialState.FAIL and "failure" in trial.user_attrs)


def counts(study: optuna.Study) -> tuple[int, int]:
    """(trials with an outcome, RUNNING trials), surplus ones excluded. WAITING trials (re-queued) are not
    counted: the next asks take them first."""
    done = running = 0
    for trial in study.get_trials(deepcopy=False):
        if has_outcome(trial):
            done += 1
        elif trial.state == TrialState.RUNNING and not is_skipped(trial):
            running += 1
    return done, running


def is_surplus(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """True when ``budget`` claimed trials have lower numbers than ``trial`` (workers raced for the last ones:
    the higher numbers give way, so exactly one of them runs)."""
    below = 0
    for other in study.get_trials(deepcopy=False):
        if other.number >= trial.number or is_skipped(other):
            continue
        if has_outcome(other) or other.state in (TrialState.RUNNING, TrialState.WAITING):
            below += 1
    return below >= budget


def requeue(study: optuna.Study, trial: FrozenTrial | optuna.Trial, reason: str, exclusive: bool = False) -> bool:
    """Fail ``trial`` (if still RUNNING) and add a WAITING copy with its parameters, so the next ask runs it again.

    Shared storage: fail first: the state change is atomic there, so of two workers requeuing one trial only one
    adds a copy (a kill between the two steps loses the copy; a fresh trial then takes its place in the budget).
    ``exclusive`` (this process is the storage's only writer): copy first, unless a copy exists, so a kill between
    the steps loses nothing."""
    frozen = trial if isinstance(trial, FrozenTrial) else study._storage.get_trial(trial._trial_id)
    copied = any(frozen.number in t.system_attrs.get("retry_history", ()) for t in study.get_trials(deepcopy=False))
    if exclusive and not copied:
        _add_copy(study, frozen)
    try:
        if not study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL):
            return False
    except (UpdateFinishedTrialError, StorageInternalError):  # another worker was first, or a database hiccup
        return False  # (then the trial is still RUNNING and the next check tries again)
    if not exclusive and not copied:
        _add_copy(study, frozen)
    log.warning("trial %d %s: re-queued to run again", frozen.number, reason)
    return True


def _add_copy(study: optuna.Study, frozen: FrozenTrial) -> None:
    system_attrs = {**frozen.system_attrs, "failed_trial": frozen.system_attrs.get("failed_trial", frozen.number)}
    system_attrs["retry_history"] = [*frozen.system_attrs.get("retry_history", []), frozen.number]
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
        system_attrs=system_attrs,
    ))  # fmt: skip


def requeue_stale(study: optuna.Study, store: SweepStorage) -> int:
    """Re-queue the RUNNING trials of dead workers: all of them for the journal (this process holds the lock),
    those whose heartbeat stopped for an RDB. Returns how many."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if store.shared:
        stale = set(study._storage._get_stale_trial_ids(study._study_id))
        running = [t for t in running if t._trial_id in stale]
        reason = f"lost its worker (no heartbeat for {GRACE_FACTOR * (store.heartbeat or 0)} s)"
    else:
        reason = "was interrupted (its process stopped)"
    return sum(requeue(study, trial, reason, exclusive=not store.shared) for trial in running)


def drop_leftovers(study: optuna.Study) -> None:
    """When the budget is met, a re-queued copy may still wait (it was added while another worker asked a fresh
    trial in its place): take each and mark it ``surplus``, so no trial is left WAITING."""
    for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize": we beat ourselves (beats())
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()  # pops a WAITING trial (or, if another worker took it meanwhile, makes a new one)
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
