"""``--view-average softmax | logits``: how a video's rows (its clips, its test-view crops) are combined into its
prediction: the mean of their softmax by default (V-JEPA's evaluation), the mean of their logits on request (the rule
before test views, and of runs recorded before the setting). Checked on every path that combines them: a lone run's
val/test figures, a stack's (``--seeds``), ``evaluate``, ``predict``."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.config import TrainConfigError, make_config
from step_cache.training.data_source import open_token_source
from step_cache.training.evaluation import evaluate, load_probe, predict, recorded_selection, run_view_average
from step_cache.training.evaluation_text import evaluation_line
from step_cache.training.inference import collect_logits
from step_cache.training.metrics import average_by_video
from step_cache.training.run_record import record_differences
from step_cache.training.trainer import train_probe

SETTINGS = {"epochs": 2, "batch_size": 8, "progress": False}


def test_softmax_average_is_the_mean_of_the_rows_softmax_and_can_disagree_with_the_logit_mean():
    # one confident wrong row against two mildly right ones: the logit mean says class 1, the softmax mean class 0
    logits = np.array([[0.0, 7.0], [3.0, 0.0], [3.0, 0.0], [2.0, 0.0]])
    videos = ["a", "a", "a", "b"]
    probabilities, keys, first = average_by_video(logits, videos, "softmax")
    soft = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, [soft[:3].mean(axis=0), soft[3]], rtol=1e-15)
    assert keys.tolist() == ["a", "b"] and first.tolist() == [0, 3]
    mean_logits, _, _ = average_by_video(logits, videos, "logits")
    np.testing.assert_allclose(mean_logits[0], [2.0, 7 / 3])
    assert probabilities[0].argmax() == 0 and mean_logits[0].argmax() == 1
    with pytest.raises(ValueError, match="view_average must be one of softmax, logits"):
        average_by_video(logits, videos, "max")


def test_the_setting_defaults_to_softmax_and_old_runs_read_as_logits():
    assert make_config("linear", {}).view_average == "softmax"
    with pytest.raises(TrainConfigError, match="view_average must be one of softmax, logits, got 'mean'"):
        make_config("linear", {"view_average": "mean"})
    assert run_view_average({"config": {}}) == "logits"  # evaluated so before the setting existed
    assert run_view_average({"config": {"view_average": "softmax"}}, "logits") == "logits"
    # --resume of such a run: the setting must match, as for any setting
    old = {"config": json.loads(json.dumps(asdict(make_config("linear", {})))), "data": {}}
    del old["config"]["view_average"]
    new = json.loads(json.dumps({"config": old["config"], "data": {}}))
    assert record_differences(old, {**new, "config": {**new["config"], "view_average": "softmax"}}) == [
        "view_average: 'logits' in the run, 'softmax' now"
    ]
    assert record_differences(old, {**new, "config": {**new["config"], "view_average": "logits"}}) == []


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("view-average")
    # three clips per video, noisy: the clips of a video disagree, so the two rules give different probabilities
    write_token_cache(directory, videos_per_class=12, clips_per_video=3, dim=16, noise=2.0, val_every=4, test_every=3)
    return directory


def clip_logits(run, cache, split):
    """(per-clip logits, videos, labels) of the run's best checkpoint on the clips of ``split``."""
    record, probe = load_probe(run)
    shards = open_shards(cache)
    indices = np.nonzero(shards.splits == split)[0]
    source = open_token_source(shards, indices, recorded_selection(record), shards.labels, mode="memory")
    try:
        logits = collect_logits(probe, source, indices, amp=False)
    finally:
        source.close()
    return logits.astype(np.float64), shards.videos[indices], shards.labels[indices]


def mean_softmax(logits, videos):
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    keys = list(dict.fromkeys(videos.tolist()))
    return keys, np.stack([probabilities[videos == key].mean(axis=0) for key in keys])


def test_a_run_evaluate_and_predict_use_the_mean_softmax(cache, tmp_path):
    run = tmp_path / "run"
    result = train_probe(cache, "linear", run, **SETTINGS)
    assert json.loads((run / "config.json").read_text())["config"]["view_average"] == "softmax"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["view_average"] == "softmax" and metrics["unit"] == "video (clip softmax averaged)"

    logits, videos, labels = clip_logits(run, cache, "test")
    keys, probabilities = mean_softmax(logits, videos)
    video_labels = np.array([labels[videos == key][0] for key in keys])
    top1 = float((probabilities.argmax(axis=1) == video_labels).mean())
    assert result.metrics["headline_split"] == "test"
    assert result.metrics["top1"] == pytest.approx(top1, abs=1e-12)  # the run's own test figure
    assert evaluate(run, cache, split="test", orders=False)["top1"] == pytest.approx(top1, abs=1e-12)

    out = predict(run, cache, tmp_path / "predictions.csv", top_k=2)
    rows = {row["video"]: row for row in csv.DictReader(out.open())}
    classes = json.loads((run / "config.json").read_text())["data"]["classes"]
    logit_rule = torch.softmax(torch.from_numpy(np.stack([logits[videos == k].mean(0) for k in keys])), 1).numpy()
    gaps = []
    for key, expected, by_logits in zip(keys, probabilities, logit_rule, strict=True):
        for k in (1, 2):
            c = classes.index(rows[key][f"class_{k}"])
            # the CSV prints 6 decimals: within half a unit of the 6th of the mean softmax
            assert abs(float(rows[key][f"prob_{k}"]) - expected[c]) <= 5e-7 + 1e-12
        gaps.append(abs(expected - by_logits).max())
    assert max(gaps) > 1e-3  # the rules differ on these videos: the check above tells them apart


def test_view_average_logits_keeps_the_mean_of_the_logits_on_every_path(cache, tmp_path):
    run = tmp_path / "seeds"
    result = train_probe(cache, "linear", run, seeds=2, view_average="logits", **SETTINGS)  # the stacked path
    assert "| videos: clip logits averaged" in result.summary()  # the printed line names a non-default rule
    for seed in (0, 1):
        metrics = json.loads((run / "seeds" / f"seed-{seed}" / "metrics.json").read_text())
        assert metrics["view_average"] == "logits" and metrics["unit"] == "video (clip logits averaged)"
        # evaluate follows the run's own rule: it reproduces each seed's test figures from its checkpoint
        figures = evaluate(run, cache, split="test", seed=seed, orders=False)
        assert metrics["headline_split"] == "test"
        assert figures["view_average"] == "logits" and figures["top1"] == pytest.approx(metrics["top1"], abs=1e-12)
        assert "videos: clip logits averaged" in evaluation_line({**figures, "excluded_clips": 0})
    logits, videos, labels = clip_logits(run, cache, "test")
    keys = list(dict.fromkeys(videos.tolist()))
    by_logits = np.stack([logits[videos == key].mean(axis=0) for key in keys])
    video_labels = np.array([labels[videos == key][0] for key in keys])
    expected = float((by_logits.argmax(axis=1) == video_labels).mean())
    assert evaluate(run, cache, split="test", seed=0, orders=False)["top1"] == pytest.approx(expected, abs=1e-12)
    out = predict(run, cache, tmp_path / "p.csv", top_k=1)
    first = next(row for row in csv.DictReader(out.open()) if row["video"] in keys)  # a test video
    probabilities = torch.softmax(torch.from_numpy(by_logits[keys.index(first["video"])]), 0).numpy()
    assert float(first["prob_1"]) == pytest.approx(probabilities.max(), abs=5e-7 + 1e-12)

    # report: runs that combine a video's clips by different rules are named in a note; one rule, no note
    from step_cache.report.build import load_run, view_average_lines

    soft = tmp_path / "soft"
    train_probe(cache, "linear", soft, **SETTINGS)
    lines = view_average_lines([load_run(run, "seeds"), load_run(soft, "soft")])
    assert lines == ["note: the runs average a video's clips and views by different rules (seeds: logits, "
                     "soft: softmax; --view-average)"]  # fmt: skip
    assert view_average_lines([load_run(soft, "soft")]) == []


@pytest.mark.parametrize("view_average", ["softmax", "logits"])
def test_timeline_windows_combine_their_clips_by_the_run_rule(view_average):
    """``RunModel.classify`` (timeline, Recognizer): the softmax of a window's scores is the clips' mean softmax
    (or the softmax of their mean logits); one clip keeps the probe's logits."""
    from step_cache.cache.manifest import TokenLayout
    from step_cache.recognition.model import RunModel
    from step_cache.training.token_data import select_tokens

    torch.manual_seed(0)
    probe = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 8, 3))  # (B, T, P, D) -> 3 classes
    model = object.__new__(RunModel)  # the classifying half only: no backbone needed
    model.selection = select_tokens(TokenLayout(cls_tokens=1, grid=(2, 2), dim=8), "all")
    model.device, model.amp, model.probe, model.view_average = torch.device("cpu"), False, probe.eval(), view_average
    windows = np.random.default_rng(0).normal(size=(2, 3, 4, 5, 8)).astype(np.float16)  # 2 windows of K = 3 clips
    with torch.no_grad():
        clip_logits = probe(torch.from_numpy(windows.reshape(6, 4, 5, 8).astype(np.float32))).double().reshape(2, 3, 3)
    scores = torch.from_numpy(model.classify(windows)).double()
    if view_average == "softmax":
        expected = torch.softmax(clip_logits, dim=2).mean(dim=1)
    else:
        expected = torch.softmax(clip_logits.mean(dim=1), dim=1)
    torch.testing.assert_close(torch.softmax(scores, dim=1), expected, rtol=0, atol=1e-6)  # float32 logits
    one = model.classify(windows[:, :1])
    np.testing.assert_allclose(one, clip_logits[:, 0].numpy(), rtol=1e-6, atol=1e-6)
