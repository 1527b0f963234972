"""The command line of several layers: extract --layers, inspect, compact --layers, train-probe --layers; bad
specs stop with one line naming the option."""

from __future__ import annotations

import json

from conftest import TINY_CLI
from test_cli_extract import run_cli

from step_cache import open_shards


def test_layers_from_the_command_line(video_tree, tmp_path):
    out = tmp_path / "shards"
    run_cli("extract", "--videos", video_tree, "--out", out, *TINY_CLI, "--layers", "last3", check=True)
    assert open_shards(out).layout.layers == (9, 10, 11)
    shown = run_cli("inspect", out, check=True).stdout
    assert "(shard format v5)" in shown and "layers     3 blocks [9, 10, 11] (0-based)" in shown
    run_cli("compact", out, "--out", tmp_path / "two", "--layers", "9,11", "--quiet", check=True)
    assert json.loads(run_cli("inspect", tmp_path / "two", "--json", check=True).stdout)["tokens"]["layers"] == [9, 11]
    run = tmp_path / "run"
    run_cli("train-probe", out, "--probe", "linear", "--layers", "concat:last2", "--epochs", "1", "--out", run,
            "--quiet", check=True)  # fmt: skip
    assert json.loads((run / "config.json").read_text())["data"]["tokens"]["layers"] == [10, 11]


def test_bad_layer_specs_stop_with_one_line(video_tree, tmp_path):
    result = run_cli("extract", "--videos", video_tree / "slide_left", "--out", tmp_path / "x", *TINY_CLI,
                     "--layers", "top")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--layers top: expected last, lastN or comma-separated block indices" in result.stderr
    result = run_cli("extract", "--videos", video_tree / "slide_left", "--out", tmp_path / "y", *TINY_CLI,
                     "--layers", "12")  # fmt: skip
    assert result.returncode == 1 and "--layers 12: block(s) [12] outside the model's blocks 0..11" in result.stderr
    plain = tmp_path / "plain"
    run_cli("extract", "--videos", video_tree / "slide_left", "--out", plain, *TINY_CLI, check=True)
    result = run_cli("train-probe", plain, "--probe", "linear", "--layers", "10", "--epochs", "1", "--out",
                     tmp_path / "r", "--quiet")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        "--layers 10: this cache holds the last block only (block 11, the last of the backbone's 12)" in result.stderr
    )


def test_predict_from_videos_and_the_run_model_read_the_runs_layers(tmp_path):
    import csv

    import numpy as np
    import torch
    from conftest import TINY

    from step_cache import extract
    from step_cache.demo_dataset import make_demo_dataset
    from step_cache.recognition.model import RunModel
    from step_cache.training.evaluation import load_probe, predict
    from step_cache.training.trainer import train_probe

    demo = tmp_path / "demo"
    make_demo_dataset(demo, per_class=3, num_frames=17, size=(64, 64), kinds=["slide"], progress=False)
    shards = tmp_path / "shards"
    extract(demo, shards, annotations=demo / "annotations.csv", layers="last2", **TINY)
    run = tmp_path / "run"
    train_probe(shards, "linear", run, layers="concat:last2", epochs=2, batch_size=4, progress=False)
    out = tmp_path / "videos.csv"
    run_cli("predict", "--run", run, "--videos", demo, "--annotations", demo / "annotations.csv", "--out", out,
            "--quiet", check=True)  # fmt: skip

    def rows(path):
        with open(path, newline="", encoding="utf-8") as handle:
            return {row["video"]: row for row in csv.DictReader(handle)}

    from_videos, from_cache = rows(out), rows(predict(run, shards, tmp_path / "cache.csv"))
    assert from_videos and set(from_videos) <= set(from_cache)
    for video, row in from_videos.items():  # re-extracted with the run's layers: the same answers
        assert row["class_1"] == from_cache[video]["class_1"]
        np.testing.assert_allclose(float(row["prob_1"]), float(from_cache[video]["prob_1"]), atol=1e-6)
    # the live model (timeline): frames of (L, P, D) tokens, windows of them, the run's layers concatenated
    model = RunModel(run, device="cpu")
    cache = open_shards(shards)
    stored = cache.read_tokens([0])  # (1, 2, T, P, D)
    window = np.moveaxis(stored, 1, 2)[:, None]  # (B=1, K=1, T, L, P, D), as gathered from encoded frames
    _, probe = load_probe(run)
    expected = probe(torch.cat([torch.from_numpy(stored[:, 0]), torch.from_numpy(stored[:, 1])], -1)[:, :, :1].float())
    np.testing.assert_allclose(model.classify(window), expected.detach().numpy(), rtol=1e-6, atol=1e-6)
