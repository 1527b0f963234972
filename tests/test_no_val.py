"""``--val none``: no validation split; a fixed schedule, the last epoch's weights as the checkpoint, no early
stopping; labelled in metrics.json, config.json, the printed line; a lone run and a ``--seeds`` stack alike."""

from __future__ import annotations

import json

import pytest
import torch

from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.metrics_file import upgrade
from step_cache.training.splits import DataError
from step_cache.training.trainer import train_probe

SETTINGS = {"epochs": 4, "batch_size": 8, "progress": False, "val": "none"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("no-val-tokens")
    write_token_cache(directory, videos_per_class=8, dim=16, val_every=4, test_every=3)
    return directory


def test_no_val_run_trains_its_whole_schedule_and_keeps_the_last_weights(cache, tmp_path):
    result = train_probe(cache, "linear", tmp_path / "run", **SETTINGS)
    m = result.metrics
    assert m["validation"] == "none" and m["checkpoint"] == "last" and m["headline_split"] == "test"
    assert m["best_epoch"] == 4 and m["epochs_trained"] == 4 and m["early_stop"]["patience"] is None
    assert "val" not in m["splits"] and "val" not in m["per_seed"][0] and m["top1"] == m["splits"]["test"]["top1"]
    assert [r["val_top1"] for r in result.history] == [None] * 4
    # best.pt holds the last epoch's weights: last.pt is the same tensors
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    best, last = best.get("model", best), last.get("model", last)
    assert all(torch.equal(best[k], last[k]) for k in best)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["config"]["val"] == "none" and record["config"]["early_stop"] is False
    assert record["data"]["splits"]["val"] == 0 and record["data"]["splits"]["val_source"] == "none"
    assert "no val: fixed schedule, last epoch's weights" in result.summary()
    assert upgrade(m) is m  # still format 2: no field changed its meaning
    from step_cache.report.build import build_report

    markdown = build_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "no val: fixed schedule, last epoch's weights (epoch 4)" in markdown


def test_val_clips_of_the_cache_are_not_trained_on(cache, tmp_path):
    with_val = train_probe(cache, "linear", tmp_path / "a", epochs=1, batch_size=8, progress=False)
    without = train_probe(cache, "linear", tmp_path / "b", epochs=1, batch_size=8, progress=False, val="none")
    assert with_val.metrics["validation"] == "cache" and with_val.metrics["checkpoint"] == "best"
    train_a = json.loads((tmp_path / "a" / "config.json").read_text())["data"]["splits"]["train"]
    train_b = json.loads((tmp_path / "b" / "config.json").read_text())["data"]["splits"]["train"]
    assert train_a == train_b and without.metrics["videos"] == with_val.metrics["videos"]


def test_seeds_stack_without_validation(cache, tmp_path):
    result = train_probe(cache, "linear", tmp_path / "s", seeds=2, **SETTINGS)
    m = result.metrics
    assert m["checkpoint"] == "last" and [e["best_epoch"] for e in m["per_seed"]] == [4, 4]
    assert "val" not in m["splits"] and all("val" not in e for e in m["per_seed"])
    # each seed's test figures equal a lone run of that seed (the stack keeps its last weights too)
    lone = train_probe(cache, "linear", tmp_path / "one", seed=1, **SETTINGS)
    assert m["per_seed"][1]["test"]["top1"] == pytest.approx(lone.metrics["top1"], abs=1e-12)


def test_no_val_refuses_what_needs_validation(tmp_path):
    with pytest.raises(TrainConfigError, match=r"--val none\) trains without validation.*drop patience"):
        make_config("linear", {"val": "none", "patience": 3})
    with pytest.raises(TrainConfigError, match=r"drop select_metric \(--select-metric\)"):
        make_config("linear", {"val": "none", "select_metric": "mean-class"})
    with pytest.raises(TrainConfigError, match=r"val must be one of auto, none, got 'off'"):
        make_config("linear", {"val": "off"})
    no_test = tmp_path / "no-test"
    write_token_cache(no_test, videos_per_class=4, dim=16)
    with pytest.raises(DataError, match=r"val='none' reports the test split.*no test clips \(give a cache with a test "
                       r"split, or validate: val='auto'\)$"):  # fmt: skip
        train_probe(no_test, "linear", tmp_path / "r", **SETTINGS)
