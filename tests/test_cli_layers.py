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
    assert "--layers 10: this cache holds the last block only (no layer axis)" in result.stderr
