"""Issue 23 case 7: input shorter than a clip or a window is reported, and empty frames are refused clearly.

A 3-frame video at T = 4 gets ``short=True`` in predict's CSV (its frames are repeated) and a warning line with
the count; ``timeline`` says when a video is shorter than one window (and when --window is longer than the video);
``Recognizer.push`` refuses an empty frame with a ValueError instead of a ZeroDivisionError."""

import csv
import logging
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY

from step_cache.extraction.engine import extract
from step_cache.recognition.model import RunModel
from step_cache.recognition.recognizer import Recognizer
from step_cache.recognition.timeline import run_timeline
from step_cache.synthetic.videos import moving_square, write_class_folders, write_video
from step_cache.training.trainer import train_probe

T = TINY["frames"]  # 4


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """Six 8-frame videos and one of 3 frames (blink/blink_0.mp4), their TINY cache (T = 4) and a linear run."""
    root = tmp_path_factory.mktemp("short")
    write_class_folders(root / "videos", {"left": -1, "right": 1}, videos_per_class=3, num_frames=8)
    write_video(root / "videos" / "blink" / "blink_0.mp4", moving_square(num_frames=3, direction=1, seed=7))
    extract(root / "videos", root / "c", **TINY)
    train_probe(root / "c", "linear", root / "run", epochs=1, batch_size=4, progress=False)
    return root


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["video"]: row for row in csv.DictReader(handle)}


def test_predict_marks_short_videos_and_counts_them(short_run, tmp_path):
    out = tmp_path / "p.csv"
    result = cli("predict", "--run", short_run / "run", "--features", short_run / "c", "--out", out)
    assert result.returncode == 0, result.stderr
    rows = _rows(out)
    assert len(rows) == 7 and list(next(iter(rows.values())))[:4] == ["video", "clips", "label", "short"]
    assert {video for video, row in rows.items() if row["short"] == "True"} == {"blink/blink_0.mp4"}
    assert {row["short"] for video, row in rows.items() if video != "blink/blink_0.mp4"} == {"False"}
    warning = [line for line in result.stderr.splitlines() if "fewer frames" in line]
    assert warning == [
        f"1 of 7 videos had fewer frames than the run's {T} per clip, so frames were repeated (short=True in {out})"
    ]


def test_predict_videos_marks_a_short_file(short_run, tmp_path):
    out = tmp_path / "one.csv"
    video = short_run / "videos" / "blink" / "blink_0.mp4"
    result = cli("predict", "--run", short_run / "run", "--videos", video, "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert _rows(out)["blink_0.mp4"]["short"] == "True"
    assert "1 of 1 videos had fewer frames than the run's 4 per clip" in result.stderr


def test_timeline_says_when_the_video_is_shorter_than_a_window(short_run, caplog):
    model = RunModel(short_run / "run", device="cpu")
    video = short_run / "videos" / "blink" / "blink_0.mp4"
    with caplog.at_level(logging.WARNING):
        result = run_timeline(model, video, window=10.0, progress=False)
    assert len(result.results) == 1 and result.frames == 3
    length = result.plan.length  # 10 s at 25 fps, a multiple of T: 248 frames
    assert length == 248 and result.fps == 25
    messages = [r.getMessage() for r in caplog.records if "shorter than one window" in r.getMessage()]
    assert messages == [
        f"{video}: 3 frames (0.12 s) is shorter than one window of 248 frames (9.92 s): one window of the whole "
        "video, fewer than the run's 4 per clip, so frames are repeated (window=10 s is longer than the video)"
    ]
    assert "1 window of the whole video, 3 frames (shorter than one window of 248) at 25 fps" in result.summary()
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a long enough video: nothing said
        long = run_timeline(model, short_run / "videos" / "left" / "left_0.mp4", window=0.16, progress=False)
    assert long.short is None and not [r for r in caplog.records if "shorter" in r.getMessage()]


@pytest.mark.parametrize(
    "frame", [np.zeros((0, 0, 3), np.uint8), np.zeros((0, 32, 3), np.uint8), np.zeros((32, 0, 3), np.uint8)]
)
def test_recognizer_refuses_empty_frames(short_run, frame):
    recognizer = Recognizer(short_run / "run", fps=25, window=0.32, device="cpu")
    with pytest.raises(ValueError, match=r"Recognizer.push: a frame must be \(H, W, 3\) RGB uint8 with H, W >= 1"):
        recognizer.push(frame)
    assert recognizer.frames_seen == 0  # the refused frame is not counted
    assert recognizer.push(np.zeros((32, 32, 3), np.uint8)) is None and recognizer.frames_seen == 1


def test_extract_reports_short_videos_and_inspect_lists_them(short_run, tmp_path):
    from step_cache.cache.summary import format_summary, summarize_cache

    out = tmp_path / "c"
    report = extract(short_run / "videos", out, **TINY)
    assert report.short == ["blink/blink_0.mp4"]
    expected = f"; 1 short (fewer than {T} frames, frames repeated; step-cache inspect {out} lists them)"
    assert expected in report.summary()
    summary = summarize_cache(out)
    assert summary["short_videos"] == 1 and summary["short_video_names"] == ["blink/blink_0.mp4"]
    lines = format_summary(summary).splitlines()
    at = lines.index("  short      1 videos had fewer frames than sampled (frames repeated):")
    assert lines[at + 1] == "    blink/blink_0.mp4"
    again = extract(short_run / "videos", out, **TINY)  # a resumed run extracts nothing, so reports none
    assert again.short == [] and "frames repeated" not in again.summary()


def test_train_probe_says_how_many_short_videos_it_uses_and_where_they_are_listed(short_run, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="step_cache.training.run_data"):
        train_probe(short_run / "c", "linear", tmp_path / "run", epochs=1, batch_size=4, progress=False)
    lines = [r.getMessage() for r in caplog.records if "repeat frames" in r.getMessage()]
    assert lines == [
        f"1 of the 7 videos this run uses had fewer than {T} frames, so their clips repeat frames "
        f"(step-cache inspect {short_run / 'c'} lists them)"
    ]
