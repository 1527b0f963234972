"""train-probe / evaluate / predict through the real CLI, on tokens extracted from generated videos."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import TINY

from step_cache.extraction.engine import extract
from step_cache.probes import PROBES
from step_cache.synthetic.tokens import write_token_cache

SHORT = ["--epochs", "2", "--batch-size", "4", "--quiet"]


# One thread: tiny models on a shared 2-core machine crawl when OpenMP threads spin against each other.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli_process(*args):
    command = [sys.executable, "-m", "cli", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def run_cli(*args, check=False):
    command = [sys.executable, "-m", "cli", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def shards(_video_tree, tmp_path_factory):
    """9 good videos in 3 classes (blink: 1, slide_left: 4, slide_right: 4), 4 frames of 1 + 2x2 tokens, D=192."""
    out = tmp_path_factory.mktemp("cli-train") / "shards"
    extract(_video_tree, out, **TINY)
    (out.parent / "pairs.txt").write_text("slide_left,slide_right\n")
    return out


def test_every_probe_end_to_end(shards, tmp_path):
    pairs = shards.parent / "pairs.txt"
    step_options = ["--pairs", pairs, "--no-mlp", "--depth", "1"]  # the cache itself declares no pairs
    # The four runs in parallel processes: most of each is interpreter and torch start-up.
    processes = {}
    for probe in PROBES:
        extra = step_options if probe == "step" else []
        where = [shards] if probe == "linear" else ["--features", shards]  # positional or --features
        args = [*where, "--probe", probe, "--out", tmp_path / probe, *SHORT, *extra]
        processes[probe] = cli_process("train-probe", *args)
    lines = {}
    for probe, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        run = tmp_path / probe
        lines[probe] = stdout.strip().splitlines()[-1]
        assert lines[probe].startswith(f"{probe}: val top-1 ") and "reversed" in lines[probe]
        config = json.loads((run / "config.json").read_text())
        assert config["config"]["probe"] == probe and config["config"]["epochs"] == 2
        assert config["data"]["classes"] == ["blink", "slide_left", "slide_right"]
        assert config["data"]["splits"]["val"] == 2  # one of 4 videos of each slide class; blink's only video trains
        epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2]
        metrics = json.loads((run / "metrics.json").read_text())
        assert {"top1", "top5", "mean_class_accuracy", "per_class_accuracy", "confusion_matrix", "reversed_top1",
                "shuffled_top1", "parameters", "parameters_without_head", "train_time_s", "train_clips_per_s"} <= set(
            metrics)  # fmt: skip
        assert len(metrics["confusion_matrix"]) == 3 and metrics["videos"] == 2
        assert f"{metrics['parameters']:,} params" in lines[probe]
        for name in ("best.pt", "last.pt"):
            assert "head.weight" in torch.load(run / name, weights_only=True)
    run = tmp_path / "step"
    metrics = json.loads((run / "metrics.json").read_text())
    headline = metrics["per_seed"][0][metrics["headline_split"]]
    assert metrics["pairs"] == [["slide_left", "slide_right"]] and headline["pair_count"] == 2
    assert 0.0 <= metrics["reversed_pair_accuracy"] <= 1.0
    assert json.loads((run / "config.json").read_text())["config"]["probe_options"]["mlp"] is False

    out = tmp_path / "eval.json"
    shown = run_cli("evaluate", "--run", run, "--features", shards, "--split", "val", "--out", out, check=True).stdout
    assert "step on 2 videos (2 clips; val split, seed 0): top-1" in shown
    assert json.loads(out.read_text())["top1"] == metrics["top1"]  # the run's own val split, best checkpoint

    preds = tmp_path / "preds.csv"
    # The cache positionally, as train-probe takes it (evaluate above: --features, the design card's spelling).
    shown = run_cli("predict", shards, "--run", run, "--out", preds, "--top-k", "2", check=True).stdout
    assert f"for 9 videos to {preds}" in shown
    rows = list(csv.DictReader(preds.read_text().splitlines()))
    assert len(rows) == 9 and {r["label"] for r in rows} == {"blink", "slide_left", "slide_right"}
    assert all(r["class_1"] in ("blink", "slide_left", "slide_right") and float(r["prob_1"]) > 0 for r in rows)

    # The run is complete: resuming trains nothing and reports the same result.
    resumed = run_cli("train-probe", "--features", shards, "--out", run, *SHORT, *step_options, "--resume", check=True)
    assert resumed.stdout.strip().splitlines()[-1] == lines["step"]


@pytest.fixture(scope="module")
def invoke():
    from typer.testing import CliRunner

    from cli.main import _register_commands, app

    _register_commands()
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def test_clear_one_line_errors(invoke, shards, tmp_path):
    """In-process (the same code path as the console script, without a subprocess per case)."""
    synthetic = tmp_path / "synthetic"
    write_token_cache(synthetic, videos_per_class=1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    cases = [
        (["train-probe"], "give the cache directory"),
        (["train-probe", "--features", "/no/such/cache"], "/no/such/cache: cache directory does not exist"),
        (["train-probe", "--features", shards, "--probe", "mamba", "--out", tmp_path / "r"], "unknown probe 'mamba'"),
        (
            ["train-probe", "--features", shards, "--probe", "linear", "--no-frame-pos", "--out", tmp_path / "r"],
            "probe 'linear' has no option frame_pos",
        ),
        (["train-probe", "--features", shards, "--features", synthetic, "--out", tmp_path / "r"], "does not match"),
        (["train-probe", "--features", shards, "--tokens", "frames", "--out", tmp_path / "r"], "tokens must be one"),
        (["train-probe", "--features", shards, "--out", run], "already holds a run"),
        (["evaluate", "--run", tmp_path, "--features", shards], "config.json: missing"),
        (["predict", "--run", "/no/such/run", "--features", shards], "run directory does not exist"),
    ]
    for args, message in cases:
        result = invoke(*args, *(["--quiet"] if args[0] == "train-probe" else []))
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_train_probe_combines_caches_of_two_roots_with_the_same_file_names(invoke, tmp_path):
    """Two datasets extracted from different roots share relative paths (rise_0/rise_0_0000.mp4 in both): they are
    different videos and train together; the same cache given twice is still refused."""
    from step_cache.cache.manifest import read_manifest, write_manifest

    caches = []
    for name in ("kitchen", "garage"):
        cache = tmp_path / name
        write_token_cache(cache, videos_per_class=3)
        manifest = read_manifest(cache)
        manifest.source["videos"] = f"/data/{name}"
        write_manifest(cache, manifest)
        caches.append(cache)
    run = tmp_path / "run"
    args = ["--probe", "linear", "--epochs", "1", "--batch-size", "4", "--quiet", "--out", run]
    result = invoke("train-probe", "--features", caches[0], "--features", caches[1], *args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    headline = metrics["per_seed"][0][metrics["headline_split"]]
    assert metrics["epochs"] == 1 and metrics["videos"] == headline["clips"] > 0  # one clip per video: none merged
    again = invoke("train-probe", "--features", caches[0], "--features", caches[0], *args[:-1], tmp_path / "r2")
    assert again.exit_code == 1 and "is in both" in again.stderr and "the same video twice" in again.stderr


def test_token_augmentation_options(shards, tmp_path):
    pairs = shards.parent / "pairs.txt"
    args = ["--probe", "attentive", "--pairs", pairs, "--token-drop", "0.5", "--reverse-pairs", "0.3", *SHORT]
    run_cli("train-probe", shards, "--out", tmp_path / "run", *args, check=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (config["token_drop"], config["reverse_pairs"]) == (0.5, 0.3)
    refused = run_cli("train-probe", shards, "--probe", "linear", "--token-drop", "0.5", "--out", tmp_path / "lin")
    assert refused.returncode != 0 and "read the CLS token only" in refused.stderr
    assert "Traceback" not in refused.stderr
