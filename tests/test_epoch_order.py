"""The ``runs`` epoch order (step_cache.training.epoch_order): every row once, long runs, keyed by (seed, epoch),
and identical training in memory and streaming."""

import json

import numpy as np
import pytest

from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.epoch_order import MIN_RUNS, RUN_BYTES, WINDOW_BATCHES, cache_run, run_clips, runs_plan
from step_cache.training.token_data import batch_plan
from step_cache.training.trainer import train_probe


def test_runs_plan_visits_every_row_once_in_as_many_batches_as_random():
    rows = np.random.default_rng(0).choice(5000, size=1000, replace=False)  # gaps: val clips between them
    plan = runs_plan(rows, 32, run=50, seed=3, epoch=1)
    assert [len(b) for b in plan] == [len(b) for b in batch_plan(rows, 32, shuffle=True, seed=3, epoch=1)]
    assert sorted(np.concatenate(plan).tolist()) == sorted(rows.tolist())


def test_runs_plan_batches_come_from_few_runs_and_windows_shuffle_them():
    rows = np.arange(4096)
    plan = runs_plan(rows, 64, run=128, seed=0, epoch=0, window=4)
    runs_per_batch = [len(np.unique(b // 128)) for b in plan]
    # A window of 4 batches spans 256 rows: 2 runs, or 3 where it starts inside one; each batch mixes them.
    assert max(runs_per_batch) <= 3 and min(runs_per_batch) >= 2
    window = np.concatenate(plan[:4])
    assert len(np.unique(window // 128)) <= 3  # the window holds whole runs, shuffled among its batches
    assert not all(np.all(np.diff(b) == 1) for b in plan[:4])  # not merely sequential
    starts = [int(np.concatenate(plan[i : i + 2]).min() // 128) for i in range(0, 64, 2)]
    assert starts != sorted(starts)  # the runs come in shuffled order


def test_runs_plan_is_keyed_by_seed_and_epoch():
    rows = np.arange(900)
    same = [np.concatenate(runs_plan(rows, 16, run=20, seed=1, epoch=2)) for _ in range(2)]
    np.testing.assert_array_equal(*same)
    other_epoch = np.concatenate(runs_plan(rows, 16, run=20, seed=1, epoch=3))
    other_seed = np.concatenate(runs_plan(rows, 16, run=20, seed=2, epoch=2))
    assert not np.array_equal(same[0], other_epoch) and not np.array_equal(same[0], other_seed)


def test_run_length_from_clip_bytes():
    assert run_clips(RUN_BYTES // 10) == 10
    assert run_clips(3 * RUN_BYTES) == 1  # a clip larger than a run is a run of its own
    assert run_clips(0) == RUN_BYTES


def test_a_window_always_mixes_at_least_min_runs_runs(tmp_path):
    write_token_cache(tmp_path, videos_per_class=4)  # tiny clips: one 64 MiB run would hold every clip
    shards = open_shards(tmp_path)
    assert cache_run(shards, 8) == 8 * WINDOW_BATCHES // MIN_RUNS == 4
    assert cache_run(shards, 1) == 1


def test_order_option_is_checked():
    assert make_config("linear", {}).order == "random"
    with pytest.raises(TrainConfigError, match="order must be one of random, runs, got 'sorted'"):
        make_config("linear", {"order": "sorted"})


def test_runs_order_trains_identically_in_memory_and_streaming(tmp_path):
    cache = tmp_path / "cache"
    write_token_cache(cache, videos_per_class=16, clips_per_video=2, clips_per_shard=12)
    options = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "progress": False, "order": "runs"}
    memory = train_probe(cache, "step", tmp_path / "m", data="memory", **options)
    streaming = train_probe(cache, "step", tmp_path / "s", data="streaming", workers=1, **options)
    random = train_probe(cache, "step", tmp_path / "r", data="memory", **{**options, "order": "random"})
    losses = [[e["train_loss"] for e in run.history] for run in (memory, streaming, random)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]  # a different order gives different batches
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["order"] == "runs"
