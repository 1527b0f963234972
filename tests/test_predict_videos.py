"""``predict --run R --videos PATH``: the run's extraction rebuilt from its record gives the answers ``evaluate``
gives on the cache (the issue's done-criterion), through the real CLI on a tiny make-demo benchmark."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY

from step_cache.demo_dataset import make_demo_dataset
from step_cache.extraction.engine import extract
from step_cache.recognition.settings import RunSettingsError, check_weights_file, extract_options
from step_cache.training import runs
from step_cache.training.evaluation import evaluate, predict
from step_cache.training.trainer import train_probe


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """12 make-demo videos (slide_left/right, shake; 17 frames at 16 fps), their TINY cache and a linear run."""
    root = tmp_path_factory.mktemp("predict-videos")
    make_demo_dataset(
        root / "demo", per_class=4, num_frames=17, size=(64, 64), kinds=["slide", "shake"], progress=False
    )
    shards = root / "shards"
    extract(root / "demo", shards, annotations=root / "demo" / "annotations.csv", **TINY)
    run = root / "run"
    train_probe(shards, "step", run, epochs=2, batch_size=4, progress=False, probe_options={"depth": 1})
    return root / "demo", shards, run


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args, check=False, env=None):
    command = [sys.executable, "-m", "cli", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or ENV)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["video"]: row for row in csv.DictReader(handle)}


def _split_csv(demo, split, out):
    lines = (demo / "annotations.csv").read_text().splitlines()
    out.write_text("\n".join([lines[0], *[line for line in lines[1:] if line.endswith(f",{split}")]]) + "\n")
    return out


def test_predict_from_videos_matches_evaluate_on_the_cache(demo_run, tmp_path):
    demo, shards, run = demo_run
    val = _split_csv(demo, "val", tmp_path / "val.csv")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "videos.csv"
    result = run_cli(
        "predict", "--run", run, "--videos", demo, "--annotations", val, "--out", out, "--quiet",
        check=True, env={**ENV, "TMPDIR": str(scratch)},
    )  # fmt: skip
    assert f"wrote predictions for 3 videos to {out}" in result.stdout
    assert list(scratch.glob("step-cache-*")) == []  # the tokens' cache was temporary
    from_videos = _rows(out)
    from_cache = _rows(predict(run, shards, tmp_path / "cache.csv"))
    assert sorted(from_videos) == sorted(v for v, row in from_cache.items() if v in from_videos)
    for video, row in from_videos.items():
        cached = from_cache[video]
        assert row["label"] == cached["label"] == video.split("/")[0]
        assert row["class_1"] == cached["class_1"]
        # Same frames, same backbone, same float16 rounding, same probe: the same numbers.
        np.testing.assert_allclose(float(row["prob_1"]), float(cached["prob_1"]), atol=1e-6)
    metrics = evaluate(run, shards, split="val")
    classes = metrics["classes"]
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for row in from_videos.values():
        confusion[classes.index(row["label"]), classes.index(row["class_1"])] += 1
    assert confusion.tolist() == metrics["confusion_matrix"]
    assert np.mean([row["label"] == row["class_1"] for row in from_videos.values()]) == pytest.approx(metrics["top1"])


def test_one_file_unreadable_files_and_a_kept_cache(demo_run, tmp_path):
    demo, _, run = demo_run
    folder = tmp_path / "new"
    (folder / "shake").mkdir(parents=True)
    (folder / "shake" / "a.mp4").write_bytes((demo / "shake" / "shake_000.mp4").read_bytes())
    (folder / "shake" / "broken.mp4").write_text("not a video\n")
    kept = tmp_path / "kept"
    result = run_cli(
        "predict", "--run", run, "--videos", folder, "--cache", kept, "--out", tmp_path / "p.csv", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    # The reason once (as extraction skips it), the file named once more in the closing line.
    assert "1 unreadable video(s) skipped: shake/broken.mp4" in result.stdout
    assert (result.stdout + result.stderr).count("broken.mp4: not a readable video") == 1
    assert list(_rows(tmp_path / "p.csv")) == ["shake/a.mp4"]
    assert (kept / "manifest.json").is_file() and f"tokens kept in {kept}" in result.stdout
    single = run_cli("predict", "--run", run, "--videos", folder / "shake" / "a.mp4", "--out", tmp_path / "one.csv")
    assert single.returncode == 0, single.stderr
    row = _rows(tmp_path / "one.csv")["a.mp4"]
    assert row["label"] == "" and row["class_1"] == _rows(tmp_path / "p.csv")["shake/a.mp4"]["class_1"]


def test_recorded_settings_rebuild_extraction_and_weights_are_checked(demo_run, tmp_path):
    _, shards, run = demo_run
    record = runs.read_config(run)
    options = extract_options(record)
    assert options == {
        "backbone": "vit-tiny", "weights": "random", "frames": 4, "clips": 1, "image_size": 32, "pool_patches": 1,
        "dtype": "float16", "seed": 0, "frame_step": None, "test_views": None,
    }  # fmt: skip
    # a run on a frame-step cache is rebuilt with its step (extract --frame-step)
    stepped = json.loads(json.dumps(record))
    stepped["data"]["extraction"]["sampling"].update(strategy="frame-step", frame_step=4)
    assert extract_options(stepped)["frame_step"] == 4
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"other weights")
    with pytest.raises(RunSettingsError, match=r"random weights \(seed 0\), not a weights file"):
        extract_options(record, weights)
    hub = {**record, "data": {**record["data"], "extraction": {**record["data"]["extraction"]}}}
    hub["data"]["extraction"]["weights"] = {"source": "hub", "hf_hub_id": "timm/x", "sha256": "0" * 64}
    assert extract_options(hub)["weights"] == "hub"
    with pytest.raises(RunSettingsError, match="timm's hub weights"):
        extract_options(hub, weights)
    recorded = {"source": "file", "sha256": "0" * 64}
    with pytest.raises(RunSettingsError, match=r"w.safetensors: sha256 \w+\.\.\. differs from the weights"):
        check_weights_file(weights, recorded)
    result = run_cli("predict", "--run", run, "--videos", shards, "--weights", weights)
    assert result.returncode == 1 and "not a weights file" in result.stderr
    both = run_cli("predict", "--run", run, "--videos", shards, "--features", shards)
    assert both.returncode == 1 and "give either a cache (CACHE/ or --features CACHE/) or --videos PATH" in both.stderr
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["durations"] == {"1.062": 12}  # 17 frames at 16 fps, every video
