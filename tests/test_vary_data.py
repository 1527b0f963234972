"""``--seeds N --vary data``: batch order and the val hold-out vary with the seed (each seed a one-seed run of its own,
pooled as a ``--seeds`` run); ``--vary init`` (the default) keeps them shared; every std says what it varies over."""

from __future__ import annotations

import json

import pytest

from step_cache.cache.shards import open_shards
from step_cache.report.build import format_comparison, load_inputs
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.evaluation import evaluate
from step_cache.training.evaluation_text import evaluation_line
from step_cache.training.metrics_file import metrics_document, seed_metrics, spread_note
from step_cache.training.splits import DataError, shard_splits
from step_cache.training.trainer import train_probe

FAST = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """No val split: the val hold-out (20 % of the 8 training videos per class) is drawn per seed with --vary data."""
    directory = tmp_path_factory.mktemp("vary-tokens")
    write_token_cache(directory, videos_per_class=10, dim=16, test_every=5)
    return directory


def _val(run_dir) -> int:
    return json.loads((run_dir / "config.json").read_text())["data"]["splits"]["val"]


def test_vary_data_seeds_are_the_lone_runs_of_each_seed_pooled(cache, tmp_path):
    pooled = train_probe(cache, "linear", tmp_path / "data", seeds=2, vary="data", **FAST)
    m = pooled.metrics
    assert m["seeds"] == [0, 1] and m["vary"] == "data" and "std" in m
    lone = [train_probe(cache, "linear", tmp_path / f"lone-{s}", seed=s, **FAST) for s in (0, 1)]
    for entry, run in zip(m["per_seed"], lone, strict=True):
        assert entry["test"]["top1"] == run.metrics["top1"] and entry["best_epoch"] == run.metrics["best_epoch"]
        assert entry["val"]["videos"] == run.metrics["splits"]["val"]["videos"]
    assert m["top1"] == pytest.approx((lone[0].metrics["top1"] + lone[1].metrics["top1"]) / 2, abs=1e-15)
    # the seeds held out different val videos and saw different batches (different first-epoch losses)
    shards = open_shards(cache)
    held = [set(shards.videos[shard_splits(shards, 0.2, seed).val]) for seed in (0, 1)]
    assert len(held[0]) == len(held[1]) == 3 and held[0] != held[1]  # 20 % of 16 videos, other ones per seed
    first = [r.history[0]["train_loss"] for r in lone]
    assert first[0] != first[1]
    record = json.loads((tmp_path / "data" / "config.json").read_text())
    assert record["config"]["vary"] == "data" and record["data"]["seeds"] == [0, 1]
    assert "mean ± std over 2 seeds, init, batch order and val hold-out" in pooled.summary()


def test_vary_init_shares_the_hold_out_and_says_so(cache, tmp_path):
    init = train_probe(cache, "linear", tmp_path / "init", seeds=2, **FAST)
    assert init.metrics["vary"] == "init" and spread_note(init.metrics) == "std over 2 seeds, init only"
    assert "mean ± std over 2 seeds, init only" in init.summary()
    line = evaluation_line(evaluate(tmp_path / "init", cache))
    assert line.endswith("| mean ± std over 2 seeds, init only")
    table = format_comparison(load_inputs([tmp_path / "init"])[0])
    assert " 2 (init) " in table.splitlines()[2]
    with pytest.raises(TrainConfigError, match=r"vary must be one of init, data, got 'both'"):
        make_config("linear", {"vary": "both"})


def test_vary_data_val_is_scored_per_seed_and_resume_finishes_a_killed_run(cache, tmp_path):
    out = tmp_path / "killed"

    def stop_in_first_seed(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_probe(cache, "linear", out, seeds=2, vary="data", on_epoch=stop_in_first_seed, **FAST)
    assert not (out / "metrics.json").exists()
    resumed = train_probe(cache, "linear", out, seeds=2, vary="data", resume=True, **FAST)
    whole = train_probe(cache, "linear", tmp_path / "whole", seeds=2, vary="data", **FAST)
    assert resumed.metrics["top1"] == whole.metrics["top1"] and resumed.metrics["std"] == whole.metrics["std"]
    mixed = (
        r"seeds of a vary='data' run hold out different val videos, so its val split is not one set: score one seed "
        r"on its own split \(seed=1, say\), or the test or all split$"
    )
    with pytest.raises(DataError, match=mixed):
        evaluate(out, cache, split="val")
    own = evaluate(out, cache, split="val", seed=1)  # seed 1 on its own val split: its run's figures
    assert own["top1"] == resumed.metrics["per_seed"][1]["val"]["top1"]
    assert evaluate(out, cache)["top1"] == pytest.approx(resumed.metrics["top1"], abs=1e-15)  # test: shared


def test_seed_metrics_is_the_inverse_of_a_one_seed_document(cache, tmp_path):
    runs = [train_probe(cache, "linear", tmp_path / f"s{s}", seed=s, **FAST) for s in (0, 1)]
    members = [seed_metrics(r.metrics) for r in runs]
    for member, run in zip(members, runs, strict=True):
        again = metrics_document(run.metrics["seeds"], [member], run.metrics["wall_time_s"])
        assert again == run.metrics


def test_vary_data_val_of_a_cache_with_its_own_val_split_is_scored_with_every_seed(tmp_path):
    """The cache's val split is every seed's (nothing is held out per seed), so evaluate pools the seeds on it."""
    directory = tmp_path / "with-val"
    write_token_cache(directory, videos_per_class=10, dim=16, test_every=5, val_every=4)
    run = train_probe(directory, "linear", tmp_path / "run", seeds=2, vary="data", **FAST)
    assert _val(tmp_path / "run") > 0 and run.metrics["splits"]["val"]["videos"] == _val(tmp_path / "run")
    scored = evaluate(tmp_path / "run", directory, split="val")
    assert scored["seeds"] == [0, 1] and scored["vary"] == "data"
    per_seed = [entry["val"]["top1"] for entry in run.metrics["per_seed"]]
    assert scored["top1"] == pytest.approx(sum(per_seed) / 2, abs=1e-15)
    # no hold-out was drawn, so the std varies over init and batch order only (printed and evaluated alike)
    assert spread_note(run.metrics) == "std over 2 seeds, init and batch order"
    assert evaluation_line(scored).endswith("| mean ± std over 2 seeds, init and batch order")
