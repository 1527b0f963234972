"""Which val hold-out rule a run used is recorded (config.json ``data.holdout``); a run recorded before groups (no
marker, no ``config.val``) is evaluated and resumed on the per-file hold-out it trained with, not today's groups."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.evaluation import evaluate
from step_cache.training.run_record import recorded_holdout
from step_cache.training.splits import (
    HOLDOUT_FILES,
    HOLDOUT_GROUPS,
    HOLDOUT_GROUPS_V1,
    DataError,
    select_splits,
    source_video,
)
from step_cache.training.trainer import train_probe

FAST = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "progress": False}


def _per_file_holdout(labels: np.ndarray, videos: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The hold-out before groups, as ``stratified_video_holdout`` was at e2798c3^ (git history), the reference."""
    groups: dict[str, list[int]] = defaultdict(list)
    for clip, key in enumerate(videos):
        groups[source_video(str(key))].append(clip)
    names = sorted(groups)
    group_label = {
        name: max(Counter(labels[groups[name]].tolist()).items(), key=lambda item: (item[1], -item[0]))[0]
        for name in names
    }
    by_class: dict[int, list[str]] = defaultdict(list)
    for name in names:
        by_class[group_label[name]].append(name)
    classes = sorted(by_class)
    sizes = np.array([len(by_class[c]) for c in classes])
    caps = sizes - 1
    if caps.sum() == 0:
        return np.zeros(len(labels), dtype=bool)
    total = min(int(caps.sum()), max(1, round(fraction * sizes.sum())))
    rng = np.random.default_rng(seed)
    quota = np.minimum(np.floor(fraction * sizes).astype(int), caps)
    tie_break = rng.random(len(classes))
    order = np.lexsort((tie_break, -(fraction * sizes - np.floor(fraction * sizes))))
    while quota.sum() < total:
        for c in order:
            if quota.sum() < total and quota[c] < caps[c]:
                quota[c] += 1
    while quota.sum() > total:
        quota[np.argmax(quota)] -= 1
    mask = np.zeros(len(labels), dtype=bool)
    for c, count in zip(classes, quota, strict=True):
        for name in rng.permutation(by_class[c])[:count]:
            mask[groups[name]] = True
    return mask


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """UCF101-style names, groups of 3 videos (the last of each class alone), no val split: the two rules differ."""
    directory = tmp_path_factory.mktemp("ucf-tokens")
    write_token_cache(directory, task="classes", num_classes=3, videos_per_class=10, group_size=3)
    return directory


def _val_sets(shards, seed: int) -> dict[str, set[str]]:
    def val(rule: str) -> set[str]:
        chosen = select_splits(shards.labels, shards.splits, shards.videos, 0.2, seed, holdout=rule)
        return set(shards.videos[chosen.val])

    return {rule: val(rule) for rule in (HOLDOUT_FILES, HOLDOUT_GROUPS)}


def test_the_files_rule_is_the_hold_out_before_groups(cache):
    shards = open_shards(cache)
    differ = 0
    for seed in range(8):
        files = select_splits(shards.labels, shards.splits, shards.videos, 0.2, seed, holdout=HOLDOUT_FILES)
        reference = np.nonzero(_per_file_holdout(shards.labels, shards.videos, 0.2, seed))[0]
        assert sorted(files.val.tolist()) == reference.tolist() and files.holdout == HOLDOUT_FILES
        sets = _val_sets(shards, seed)
        differ += sets[HOLDOUT_FILES] != sets[HOLDOUT_GROUPS]
    assert differ >= 6  # the groups of 3 make the rules draw other videos for nearly every seed
    known = r"\(known: groups-v2, groups-v1, files\)"
    with pytest.raises(DataError, match=r"unknown val hold-out rule 'groups-v9' " + known):
        select_splits(shards.labels, shards.splits, shards.videos, 0.2, 0, holdout="groups-v9")


def test_recorded_holdout_reads_the_marker_and_dates_a_record_without_it():
    assert recorded_holdout({"config": {}, "data": {"holdout": "files"}}) == HOLDOUT_FILES
    assert recorded_holdout({"config": {"val": "auto"}, "data": {"holdout": "groups-v2"}}) == HOLDOUT_GROUPS
    assert recorded_holdout({"config": {"val": "auto"}, "data": {"holdout": "groups-v1"}}) == HOLDOUT_GROUPS_V1
    assert recorded_holdout({"config": {"seed": 0}, "data": {}}) == HOLDOUT_FILES  # before groups
    # groups, before the marker: HMDB51 clips grouped within one action, as then
    assert recorded_holdout({"config": {"val": "auto"}, "data": {}}) == HOLDOUT_GROUPS_V1
    with pytest.raises(DataError, match=r"^run/config.json: data.holdout 'groups-v9' is a val hold-out rule this"):
        recorded_holdout({"config": {}, "data": {"holdout": "groups-v9"}}, "run/config.json")


def _make_old(run_dir) -> None:
    """config.json as a run recorded before group hold-out wrote it: no data.holdout and no config.val (and so
    checkpoints.json without the run identity, which came later and hashes the config)."""
    path = run_dir / "config.json"
    record = json.loads(path.read_text())
    del record["data"]["holdout"], record["config"]["val"]
    path.write_text(json.dumps(record, indent=2))
    sums = run_dir / "checkpoints.json"
    if sums.is_file():
        content = json.loads(sums.read_text())
        content.pop("run", None)
        sums.write_text(json.dumps(content))


def _seed_where_rules_differ(shards) -> int:
    for seed in range(20):
        sets = _val_sets(shards, seed)
        if len(sets[HOLDOUT_FILES]) != len(sets[HOLDOUT_GROUPS]) and sets[HOLDOUT_FILES] - sets[HOLDOUT_GROUPS]:
            return seed
    raise AssertionError("no seed where the rules hold out a different number of videos")


def test_an_old_run_is_evaluated_on_its_per_file_hold_out(cache, tmp_path):
    shards = open_shards(cache)
    seed = _seed_where_rules_differ(shards)
    sets = _val_sets(shards, seed)
    run = tmp_path / "run"
    result = train_probe(cache, "linear", run, seed=seed, **FAST)
    assert json.loads((run / "config.json").read_text())["data"]["holdout"] == HOLDOUT_GROUPS
    assert result.metrics["splits"]["val"]["videos"] == len(sets[HOLDOUT_GROUPS])
    assert evaluate(run, cache, split="val")["videos"] == len(sets[HOLDOUT_GROUPS])
    # The same run as an old one: the val clips it trained beside were the per-file hold-out's.
    _make_old(run)
    old = evaluate(run, cache, split="val")
    assert old["videos"] == len(sets[HOLDOUT_FILES]) and old["training_videos"] == 0


def test_an_old_run_resumes_on_its_per_file_hold_out(cache, tmp_path):
    shards = open_shards(cache)
    seed = _seed_where_rules_differ(shards)
    sets = _val_sets(shards, seed)
    run = tmp_path / "killed"

    def stop(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_probe(cache, "linear", run, seed=seed, on_epoch=stop, **FAST)
    _make_old(run)
    resumed = train_probe(cache, "linear", run, seed=seed, resume=True, **FAST)
    assert resumed.metrics["splits"]["val"]["videos"] == len(sets[HOLDOUT_FILES])
    assert recorded_holdout(json.loads((run / "config.json").read_text())) == HOLDOUT_FILES  # kept as it was
    # --seeds N: the stack resumes on the stored rule too
    stack = tmp_path / "stack"
    with pytest.raises(KeyboardInterrupt):
        train_probe(cache, "linear", stack, seed=seed, seeds=2, on_epoch=stop, **FAST)
    _make_old(stack)
    stacked = train_probe(cache, "linear", stack, seed=seed, seeds=2, resume=True, **FAST)
    assert stacked.metrics["splits"]["val"]["videos"] == len(sets[HOLDOUT_FILES])


def test_a_sweep_study_from_before_the_marker_keeps_its_per_file_hold_out(cache, tmp_path, monkeypatch):
    import optuna

    from step_cache.sweeps import study as sweep_study
    from step_cache.sweeps.space import build_space

    rules = []

    class Spy(sweep_study.DataCache):  # the data set-up every trial of the study trains and validates on
        def __init__(self, shards, holdout):
            rules.append(holdout)
            super().__init__(shards, holdout)

    monkeypatch.setattr(sweep_study, "DataCache", Spy)
    space, storage = build_space("linear", ["lr=1e-3,1e-2"]), f"sqlite:///{tmp_path}/s.db"
    common = {"space": space, "trials": 0, "storage": storage, "study_name": "s", "epochs": 1, "progress": False}
    sweep_study.run_sweep(cache, "linear", tmp_path / "a", **common)
    study = optuna.load_study(study_name="s", storage=storage)
    stored = study.user_attrs["sweep"]
    assert stored["holdout"] == HOLDOUT_GROUPS and rules == [HOLDOUT_GROUPS]
    # the study as a step-cache before the marker (and before config.val) stored it: resumed, not refused
    old = {key: value for key, value in stored.items() if key != "holdout"}
    study.set_user_attr("sweep", {**old, "config": {k: v for k, v in stored["config"].items() if k != "val"}})
    sweep_study.run_sweep(cache, "linear", tmp_path / "b", **common)
    assert rules == [HOLDOUT_GROUPS, HOLDOUT_FILES]


def test_the_best_run_of_a_study_from_before_the_marker_holds_out_as_its_trials_did(cache, tmp_path):
    """best-run/ retrains the best trial alone to reproduce it: on the study's hold-out rule (per file here), the
    val videos its trials were ranked on, not today's groups."""
    import optuna

    from step_cache.sweeps import study as sweep_study
    from step_cache.sweeps.space import build_space

    shards = open_shards(cache)
    seed = _seed_where_rules_differ(shards)
    sets = _val_sets(shards, seed)
    space, storage = build_space("linear", ["lr=1e-3,1e-2"]), f"sqlite:///{tmp_path}/s.db"
    common = {"space": space, "storage": storage, "study_name": "s", "epochs": 1, "progress": False, "seed": seed}
    sweep_study.run_sweep(cache, "linear", tmp_path / "a", trials=0, **common)
    study = optuna.load_study(study_name="s", storage=storage)
    stored = study.user_attrs["sweep"]
    old = {key: value for key, value in stored.items() if key != "holdout"}
    study.set_user_attr("sweep", {**old, "config": {k: v for k, v in stored["config"].items() if k != "val"}})
    result = sweep_study.run_sweep(cache, "linear", tmp_path / "b", trials=1, **common)
    best_run = tmp_path / "b" / "best-run"
    assert json.loads((best_run / "config.json").read_text())["data"]["holdout"] == HOLDOUT_FILES
    assert result.best_run.metrics["splits"]["val"]["videos"] == len(sets[HOLDOUT_FILES])
    assert evaluate(best_run, cache, split="val")["videos"] == len(sets[HOLDOUT_FILES])
