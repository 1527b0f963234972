"""Issue 32's walkthrough, end to end on generated footage: a mirrored pair of classes ("forward" and "backward", the
same clips reversed, same file names), prepared with held-out val and test, extracted with a random ViT-Ti, trained
with --seeds 2. Every figure shown is the headline figure: the printed line, metrics.json's top level, the report's
captions, evaluate (also on the int8 compact of the cache), predict and Recognizer agree."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from conftest import TINY_CLI
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.synthetic.videos import moving_square, write_video

_register_commands()
CLIPS = 6  # per class: 6 groups of two mirrored clips
PAIRS = "forward,backward\n"


def invoke(*args: object) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    root = tmp_path_factory.mktemp("walkthrough")
    videos = root / "videos"
    for i in range(CLIPS):
        frames = moving_square(num_frames=12, direction=1, seed=i)
        write_video(videos / "forward" / f"clip_{i}.mp4", frames, crf=0)  # near-lossless: order is the only cue
        write_video(videos / "backward" / f"clip_{i}.mp4", frames[::-1].copy(), crf=0)
    prepared = invoke("prepare", "folder", "--root", videos, "--out", root / "ann.csv", "--val-fraction", "0.34",
                      "--test-fraction", "0.34")  # fmt: skip
    (root / "pairs.txt").write_text(PAIRS)
    invoke("extract", "--videos", videos, "--annotations", root / "ann.csv", "--pairs", root / "pairs.txt",
           "--out", root / "cache", *TINY_CLI)  # fmt: skip
    trained = invoke("train-probe", root / "cache", "--probe", "linear", "--seeds", "2", "--epochs", "3", "--out",
                     root / "run", "--quiet")  # fmt: skip
    return root, prepared, trained


def test_prepare_keeps_a_clip_and_its_reversed_copy_in_one_split(walkthrough):
    root, prepared, _ = walkthrough
    with open(root / "ann.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    split_of = {row["path"]: row["split"] for row in rows}
    for i in range(CLIPS):
        assert split_of[f"forward/clip_{i}.mp4"] == split_of[f"backward/clip_{i}.mp4"]
    assert sorted(split_of.values()).count("test") == 4 and sorted(split_of.values()).count("val") == 4
    assert f"held out by group: {CLIPS} group(s) of several videos" in prepared.stdout


def test_metrics_json_top_level_is_the_printed_headline(walkthrough):
    root, _, trained = walkthrough
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["format_version"] == 2 and metrics["headline_split"] == "test" and metrics["seeds"] == [0, 1]
    printed = re.search(r"linear: test top-1 ([\d.]+) ± ([\d.]+)%", trained.stdout)
    assert printed, trained.stdout
    assert float(printed.group(1)) == round(100 * metrics["top1"], 1)
    assert float(printed.group(2)) == round(100 * metrics["std"]["top1"], 1)
    assert metrics["top1"] == pytest.approx(np.mean([s["test"]["top1"] for s in metrics["per_seed"]]), abs=1e-12)
    # the printed time is the command's wall time, the training loop's share beside it
    assert re.search(r"\| [\d.]+ s \(training loop [\d.]+ s, \d+ clips/s\) ->", trained.stdout)


def test_report_captions_name_the_headline_split_and_seeds(walkthrough, tmp_path):
    root, _, _ = walkthrough
    invoke("report", root / "run", "--out", tmp_path / "rep")
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "run: confusion matrix (test split, seeds 0, 1 pooled)" in report
    assert "run: per-class accuracy (test split, seeds 0, 1 pooled)" in report
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert f"epochs {metrics['epochs_trained']}/3 (trained/planned)" in report
    assert "top-5" not in report  # 2 classes: every class is in the top 5


def test_evaluate_scores_the_headline_split_with_every_seed_and_the_chance_verdict(walkthrough):
    root, _, _ = walkthrough
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    result = invoke("evaluate", "--run", root / "run", "--features", root / "cache", "--json")
    evaluated = json.loads(result.stdout)
    assert evaluated["split"] == "test" and evaluated["seeds"] == [0, 1] and evaluated["training_videos"] == 0
    assert evaluated["top1"] == pytest.approx(metrics["top1"], abs=1e-12)
    assert evaluated["confusion_matrix"] == metrics["confusion_matrix"]
    assert evaluated["chance"]["p_value"] == pytest.approx(metrics["chance"]["p_value"])
    # The linear probe averages frames: it cannot tell a clip from its reversed copy, so it is at chance.
    assert metrics["chance"]["above"] is False
    line = invoke("evaluate", "--run", root / "run", "--features", root / "cache").stdout
    assert "(4 clips; test split, mean over seeds 0, 1): top-1 " in line and "not above chance (p = " in line
    assert "top-5" not in line
    one = json.loads(invoke("evaluate", "--run", root / "run", "--features", root / "cache", "--seed", "1",
                            "--json").stdout)  # fmt: skip
    assert one["seeds"] == [1] and one["top1"] == metrics["per_seed"][1]["test"]["top1"] and "std" not in one
    everything = CliRunner().invoke(app, ["evaluate", "--run", str(root / "run"), "--features", str(root / "cache"),
                                          "--split", "all"])  # fmt: skip
    assert everything.exit_code == 0 and "4 of the 12 videos scored are in the run's training selection" in (
        everything.stderr
    )


def test_evaluate_reads_the_int8_compact_of_the_cache_within_int8_rounding(walkthrough, tmp_path):
    root, _, _ = walkthrough
    invoke("compact", root / "cache", "--out", tmp_path / "int8", "--dtype", "int8")
    own = json.loads(invoke("evaluate", "--run", root / "run", "--features", root / "cache", "--json").stdout)
    small = json.loads(invoke("evaluate", "--run", root / "run", "--features", tmp_path / "int8", "--json").stdout)
    assert small["tokens_note"].startswith("tokens stored as int8 (the run trained on float16) are read back")
    # int8 moves each token by at most half a scale step (max|x| / 254): the video figures stay where they are on
    # these few clear-cut videos, and the loss within a small fraction.
    assert small["videos"] == own["videos"] and small["confusion_matrix"] == own["confusion_matrix"]
    assert small["loss"] == pytest.approx(own["loss"], rel=0.05)


def test_predict_notes_only_options_given(walkthrough, tmp_path):
    root, _, _ = walkthrough
    args = ["predict", "--run", str(root / "run"), "--features", str(root / "cache"), "--out", str(tmp_path / "p.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "--top-k" not in result.stderr and "wrote top-2 predictions" in result.stdout
    given = CliRunner().invoke(app, [*args, "--top-k", "5"])
    assert given.stderr.count("--top-k 5 is more than the run's 2 classes") == 1


def test_recognizer_results_carry_the_chance_verdict(walkthrough, caplog):
    from step_cache import Recognizer

    root, _, _ = walkthrough
    with caplog.at_level("WARNING"):
        recognizer = Recognizer(root / "run", fps=25.0, window=0.48)
    assert any("not above chance" in r.getMessage() for r in caplog.records)
    frames = moving_square(num_frames=12, direction=1, seed=0)
    predictions = [p for frame in frames if (p := recognizer.push(frame)) is not None]
    assert predictions and all(p.above_chance is False for p in predictions)


def test_timeline_png_carries_the_chance_warning(walkthrough, tmp_path, monkeypatch):
    from step_cache.recognition import timeline as module

    root, _, _ = walkthrough
    drawn = {}
    real = module.plot_timeline

    def spy(*args, **kwargs):
        drawn["warning"] = args[6]
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "plot_timeline", spy)
    frames = moving_square(num_frames=36, direction=1, seed=3)
    video = write_video(tmp_path / "long.mp4", np.concatenate([frames, frames[::-1]]), crf=0)
    result = module.timeline(root / "run", video, tmp_path / "t", window=0.48, progress=False)
    assert drawn["warning"] == "run not above chance: these answers are no better than guessing"
    assert (tmp_path / "t" / "timeline.png").is_file() and "not above chance" in result.summary()
