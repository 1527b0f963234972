"""Distinct configurations in a study: per-worker sampler seeds (a single uninterrupted worker keeps ``--seed``'s
sequence; a restarted process or a second worker draws its own), duplicates skipped, a finite space exhausted."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from step_cache.sweeps.distinct import ask_distinct, exhausted, holder_of, is_duplicate, space_size
from step_cache.sweeps.search import make_sampler, worker_seed
from step_cache.sweeps.space import build_space
from step_cache.sweeps.storage import DUPLICATE, counts, has_outcome

SPACE = build_space("step", ["lr=log:1e-4..1e-2", "wd=0,0.05,0.1"])
optuna.logging.set_verbosity(optuna.logging.WARNING)


def asked(study: optuna.Study, n: int) -> list[dict]:
    params = []
    for _ in range(n):
        trial = study.ask(SPACE.distributions)
        params.append(trial.params)
        study.tell(trial, trial.params["lr"])
    return params


def test_a_single_uninterrupted_worker_draws_the_same_sequence_as_a_sampler_seeded_with_seed():
    for name, plain in (("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler)):
        ours = asked(optuna.create_study(direction="maximize", sampler=make_sampler(name, SPACE, 7)), 14)
        reference = asked(optuna.create_study(direction="maximize", sampler=plain(seed=7)), 14)
        assert ours == reference, name


def test_a_restarted_process_and_a_second_worker_do_not_replay_the_first_values(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    first = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=make_sampler("tpe", SPACE, 0))  # fmt: skip
    before = asked(first, 4)
    # A new process (a restart, or another worker) opens the study with the same --seed.
    again = optuna.load_study(study_name="s", storage=storage, sampler=make_sampler("tpe", SPACE, 0))
    after = asked(again, 4)
    lrs = [p["lr"] for p in before + after]
    assert len(set(lrs)) == 8, lrs
    assert worker_seed(0, 0) == 0 and worker_seed(0, 4) != 0 and worker_seed(0, 4) != worker_seed(0, 5)


def test_space_size_counts_finite_spaces_and_is_none_for_a_continuous_range():
    assert space_size(SPACE.distributions) is None
    finite = {"wd": CategoricalDistribution([0.0, 0.1]), "depth": IntDistribution(1, 3),
              "dropout": FloatDistribution(0.0, 0.3, step=0.1)}  # fmt: skip
    assert space_size(finite) == 2 * 3 * 4


def test_duplicates_are_skipped_and_a_finite_space_is_exhausted_with_each_configuration_once():
    space = {"wd": CategoricalDistribution([0.0, 0.05, 0.1]), "depth": IntDistribution(1, 2)}
    study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe", SPACE, 0))
    configurations = []
    while (trial := ask_distinct(study, space, space_size(space), seed=0)) is not None:
        study.tell(trial, float(trial.params["depth"]))
        configurations.append(tuple(sorted(trial.params.items())))
    assert len(configurations) == 6 and len(set(configurations)) == 6
    assert exhausted(study, 6)
    trials = study.get_trials()
    skipped = [t for t in trials if DUPLICATE in t.user_attrs]
    assert all(t.state == TrialState.FAIL and not has_outcome(t) for t in skipped)
    for trial in skipped:  # each names the trial that holds its configuration
        holder = trials[trial.user_attrs[DUPLICATE]]
        assert holder.params == trial.params and has_outcome(holder)
    assert counts(study) == (6, 0)


def test_of_two_pending_trials_with_one_configuration_the_lower_number_keeps_it():
    study = optuna.create_study(direction="maximize")
    space = {"wd": CategoricalDistribution([0.0, 0.1])}
    study.enqueue_trial({"wd": 0.1})
    study.enqueue_trial({"wd": 0.1})
    low, high = study.ask(space), study.ask(space)  # two workers asked the same configuration at once
    trials = study.get_trials(deepcopy=False)
    assert holder_of(trials, low.number, low.params) is None
    assert holder_of(trials, high.number, high.params) == low.number
    # The check before an outcome is told: the higher one is skipped, the lower one counts.
    assert is_duplicate(study, high) and not is_duplicate(study, low)
    study.tell(low, 1.0)
    assert counts(study) == (1, 0)
    assert study.get_trials()[high.number].user_attrs[DUPLICATE] == low.number
