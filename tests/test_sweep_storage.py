"""The bookkeeping that makes sweeps resumable and lets several workers share a study: what counts toward
``--trials``, re-queuing a dead worker's trial exactly once, surplus trials, stale-trial detection, torn journals."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from step_cache.sweeps.storage import (
    _add_copy,
    _repair_journal,
    counts,
    drop_leftovers,
    is_surplus,
    open_storage,
    requeue,
)

LR = {"lr": FloatDistribution(1e-4, 1e-2, log=True)}


def add(study: optuna.Study, state: TrialState, **user_attrs) -> None:
    value = 0.5 if state == TrialState.COMPLETE else None
    study.add_trial(
        create_trial(state=state, value=value, params={"lr": 1e-3}, distributions=LR, user_attrs=user_attrs)
    )


def test_only_trials_with_an_outcome_count_and_running_ones_are_claimed():
    study = optuna.create_study(direction="maximize")
    add(study, TrialState.COMPLETE)
    add(study, TrialState.PRUNED)
    add(study, TrialState.FAIL, failure="val_loss is not finite")  # diverged: an outcome
    add(study, TrialState.FAIL)  # its worker died: re-queued, no outcome
    add(study, TrialState.FAIL, surplus=True)
    add(study, TrialState.WAITING)
    study.ask(LR)  # RUNNING
    assert counts(study) == (3, 1)


def test_a_requeued_trial_gets_one_copy_with_its_parameters_whoever_requeues_it():
    study = optuna.create_study()
    trial = study.ask(LR)
    assert requeue(study, trial, "lost its worker") is True
    assert requeue(study, trial, "lost its worker") is False  # already failed: a second worker adds nothing
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    copy = study.get_trials()[1]
    assert copy.params == trial.params and copy.system_attrs["retry_history"] == [0]
    again = study.ask(LR)  # the next ask takes the copy
    assert again.number == 1 and again.params == trial.params
    # The only writer copies first; killed before it failed the original, its next run adds no second copy.
    study.tell(again, 0.1)
    lone = study.ask(LR)
    _add_copy(study, study._storage.get_trial(lone._trial_id))  # ... and here the process was killed
    assert requeue(study, lone, "was interrupted", exclusive=True) is True
    assert sum(lone.number in t.system_attrs.get("retry_history", []) for t in study.get_trials()) == 1


def test_the_higher_numbers_of_a_race_for_the_last_trials_are_surplus_and_leftover_copies_are_dropped():
    study = optuna.create_study()
    first, second, third = (study.ask(LR) for _ in range(3))
    assert [is_surplus(study, t, budget=2) for t in (first, second, third)] == [False, False, True]
    add(study, TrialState.WAITING)  # a copy added after the budget was met
    drop_leftovers(study)
    assert not study.get_trials(states=(TrialState.WAITING,))
    assert study.get_trials()[-1].user_attrs == {"surplus": True}


def test_a_running_trial_without_any_heartbeat_is_stale_once_older_than_the_grace_period(tmp_path):
    store = open_storage(f"sqlite:///{tmp_path / 's.db'}", tmp_path, heartbeat=1)
    study = optuna.create_study(storage=store.storage, study_name="s")
    old = create_trial(state=TrialState.RUNNING, params={}, distributions={})
    old.datetime_start = datetime.now() - timedelta(seconds=60)
    silent = store.storage.create_new_trial(study._study_id, template_trial=old)  # died before its first beat
    beating = store.storage.create_new_trial(study._study_id, template_trial=old)
    store.storage.record_heartbeat(beating)
    store.storage.create_new_trial(study._study_id)  # just asked: its first beat may still come
    assert store.storage._get_stale_trial_ids(study._study_id) == [silent]


def test_a_record_torn_by_a_kill_is_dropped_from_the_journal(tmp_path):
    journal = tmp_path / "study.journal"
    journal.write_bytes(b'{"op_code": 0}\n{"op_code": 4, "trial')
    _repair_journal(journal)
    assert journal.read_bytes() == b'{"op_code": 0}\n'
