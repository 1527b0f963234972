"""``timeline`` and ``Recognizer`` on an untrimmed video made of three clips of different classes back to back,
with a probe trained in the fixture on clips of those classes (squares of three colours: a random-initialised
backbone tells colours apart, so a few epochs separate them); plus unit tests of windows and segments."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY

from step_cache.cache.manifest import Manifest, TokenLayout
from step_cache.cache.shards import open_shards
from step_cache.extraction.engine import extract
from step_cache.extraction.video import decode_clips
from step_cache.recognition.model import RunModel
from step_cache.recognition.recognizer import Recognizer
from step_cache.recognition.segments import merge_segments
from step_cache.recognition.stream import WindowRunner
from step_cache.recognition.timeline import run_timeline, timeline
from step_cache.recognition.windows import WindowError, WindowPlan, plan_windows
from step_cache.synthetic.videos import moving_square, write_video
from step_cache.training.evaluation import load_probe
from step_cache.training.trainer import train_probe

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 230)}
FPS = 25
TRAIN_FRAMES = 17  # 0.68 s: the default window
CLIP_FRAMES = 33  # each part of the untrimmed video: longer than a window


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("timeline")
    for name, colour in COLOURS.items():
        for i in range(4):
            frames = moving_square(TRAIN_FRAMES, (64, 64), direction=1, color=colour, seed=10 * i + len(name))
            write_video(root / "videos" / name / f"{name}_{i}.mp4", frames, fps=FPS)
    extract(root / "videos", root / "shards", **TINY)
    run = root / "run"
    train_probe(root / "shards", "linear", run, epochs=10, batch_size=4, val_fraction=0.25, progress=False)
    # The untrimmed video: new clips (other seeds, longer) of red, green, blue, back to back.
    parts = [
        moving_square(CLIP_FRAMES, (64, 64), direction=1, color=colour, seed=99 + k)
        for k, colour in enumerate(COLOURS.values())
    ]
    long_video = write_video(root / "long.mp4", np.concatenate(parts), fps=FPS)
    return run, long_video


def _read(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_timeline_names_each_action_and_writes_three_files(colour_run, tmp_path):
    run, long_video = colour_run
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cli", "timeline", str(long_video), "--run", str(run), "--out", str(out)]
    command += ["--stride", str(1 / FPS), "--min-confidence", "0", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert "windows of 17 frames every 1 (0.68 s / 0.04 s at 25 fps)" in result.stdout
    rows = _read(out / "timeline.csv")
    assert len(rows) == 3 * CLIP_FRAMES - TRAIN_FRAMES + 1  # every start from frame 0 to the last full window
    assert list(rows[0]) == ["start_s", "end_s", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    inside = 0
    for k, name in enumerate(COLOURS):
        for row in rows:
            start, end = round(float(row["start_s"]) * FPS), round(float(row["end_s"]) * FPS)
            if k * CLIP_FRAMES <= start and end <= (k + 1) * CLIP_FRAMES:
                assert row["class_1"] == name, (name, row)
                inside += 1
    assert inside == 3 * (CLIP_FRAMES - TRAIN_FRAMES + 1)
    segments = _read(out / "segments.csv")
    for k, name in enumerate(COLOURS):  # each action has a segment over the middle of its clip
        middle = (k + 0.5) * CLIP_FRAMES / FPS
        assert any(s["class"] == name and float(s["start_s"]) <= middle <= float(s["end_s"]) for s in segments)
    assert [s["class"] for s in segments if float(s["end_s"]) - float(s["start_s"]) > 0.5] == list(COLOURS)
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unreadable_video_is_one_clear_line(colour_run, tmp_path):
    run, _ = colour_run
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video\n")
    command = [sys.executable, "-m", "cli", "timeline", str(bad), "--run", str(run), "--out", str(tmp_path / "o")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 1 and "bad.mp4: not a readable video" in result.stderr
    assert not (tmp_path / "o").exists()


def test_recognizer_gives_timeline_logits(colour_run, tmp_path):
    run, long_video = colour_run
    result = timeline(run, long_video, tmp_path, stride=2 / FPS, progress=False)
    recognizer = Recognizer(run, fps=FPS, stride=2 / FPS)
    frames = decode_clips(long_video, 3 * CLIP_FRAMES).frames
    predictions = [p for frame in frames if (p := recognizer.push(frame)) is not None]
    by_start = {r.window.start: r for r in result.results}
    # A live window is answered once the last frame it samples is in, which may precede its end: the stream also
    # answers windows that reach past the video's last frame, which the timeline leaves out.
    assert [p.start_frame for p in predictions if p.end_frame <= 3 * CLIP_FRAMES] == sorted(by_start)
    for prediction in predictions[: len(by_start)]:
        expected = by_start[prediction.start_frame]
        assert prediction.end_frame == expected.window.end
        # The same float16 tokens, but the backbone ran on other batches here (a window's new frames) than there: the
        # float32 sums may differ in their last bits and round a token to the neighbouring float16 (2^-11
        # relative); through a linear probe that moves a logit by far less than 1e-3.
        np.testing.assert_allclose(prediction.logits, expected.logits, rtol=0, atol=1e-3)
    assert [p.label for p in predictions[:3]] == ["red"] * 3
    assert predictions[0].top(2)[0] == (predictions[0].label, pytest.approx(predictions[0].confidence))


def test_frames_shared_by_windows_are_encoded_once(colour_run):
    run, long_video = colour_run
    model = RunModel(run, device="cpu")
    reuse = run_timeline(model, long_video, progress=False)  # default stride: one segment of the window
    assert (reuse.plan.length, reuse.plan.stride) == (16, 4)  # 17 frames rounded to a multiple of T = 4
    distinct = {int(i) for r in reuse.results for i in r.window.indices.ravel()}
    assert reuse.frames_encoded == len(distinct) < 4 * len(reuse.results)


def test_window_plans():
    plan = plan_windows(25, frames=4, clips=1, window=0.68, stride=None)
    assert (plan.length, plan.stride) == (16, 4)
    assert plan_windows(25, 4, 1, window=None, stride=0.04, typical=0.68).length == 17
    windows = WindowPlan(length=10, stride=4, frames=4, clips=1).over(20)
    assert [(w.start, w.end) for w in windows] == [(0, 10), (4, 14), (8, 18), (10, 20)]
    assert windows[0].indices.tolist() == [[1, 3, 6, 8]]  # segment centres, as extraction samples a 10-frame clip
    assert [(w.start, w.end) for w in WindowPlan(10, 4, 4, 1).over(6)] == [(0, 6)]
    with pytest.raises(WindowError, match=r"records no clip durations .* \(window=\)"):
        plan_windows(25, 4, 1, window=None, stride=None)
    with pytest.raises(WindowError, match="less than one frame"):
        plan_windows(25, 4, 1, window=1.0, stride=0.01)


def test_segments_merge_windows_and_drop_short_noise():
    classes = ["a", "b"]
    top = [0, 0, 0, 1, 0, 0, 1, 1, 1, 1]
    probabilities = np.array([[0.9, 0.1] if c == 0 else [0.2, 0.8] for c in top])
    starts = np.arange(10.0)
    segments = merge_segments(starts, starts + 2, probabilities, classes, min_confidence=0.5, min_length=1.5)
    assert [(s.label, s.start_s, s.end_s, s.windows) for s in segments] == [("a", 0.0, 6.5, 5), ("b", 6.5, 11.0, 4)]
    unsure = merge_segments(starts, starts + 2, probabilities * 0.5, classes, min_confidence=0.5)
    assert unsure == []


def test_manifest_durations_are_optional_and_give_the_median():
    tokens = TokenLayout(cls_tokens=1, grid=(2, 2), dim=4).to_dict()  # to_dict needs the layout (format version)
    manifest = Manifest(extraction={"tokens": tokens}, classes=[])
    assert manifest.typical_duration is None and "durations" not in manifest.to_dict()
    for seconds in (1.0, 2.0, 2.0, 9.5):
        manifest.add_duration(seconds)
    assert manifest.typical_duration == 2.0
    assert manifest.to_dict()["durations"] == {"1.000": 1, "2.000": 2, "9.500": 1}


def test_runner_classifies_a_window_once_its_last_frame_is_in(colour_run):
    run, _ = colour_run
    model = RunModel(run, device="cpu")
    plan = WindowPlan(length=8, stride=2, frames=4, clips=1)
    runner = WindowRunner(model, plan.stream(), batch_frames=1)
    frame = np.zeros((64, 64, 3), np.uint8)
    last = plan.window(0).last
    assert all(runner.push(i, frame) == [] for i in range(last))
    assert [r.window.start for r in runner.push(last, frame)] == [0]


def test_merge_adds_up_the_parts_durations(video_tree, tmp_path):
    from step_cache.extraction.distributed import merge

    out = tmp_path / "parts"
    parts = [extract(video_tree, out, **TINY, num_parts=2, part=p).manifest for p in range(2)]
    assert all(part.durations for part in parts)
    merged = merge(out)
    assert sum(merged.durations.values()) == merged.num_videos == sum(p.num_videos for p in parts)
    # the generated videos: 20 frames (and one of 3) at write_video's 25 fps
    assert set(merged.durations) == {"0.800", "0.120"}


def test_a_video_with_decoder_errors_gets_a_warning_with_their_count(colour_run, tmp_path):
    # Damaged frame data decodes with errors (concealed, wrong pixels): the timeline said nothing (fault round 4)
    from test_decoder_errors import invert_frame_data

    run, long_video = colour_run
    model = RunModel(run, device="cpu")
    invert_frame_data(long_video, tmp_path / "damaged.mp4", every=3000)  # decodes, with errors
    result = run_timeline(model, tmp_path / "damaged.mp4", progress=False)
    damaged = [note for note in result.notes if "decoder error(s)" in note]
    assert len(damaged) == 1 and damaged[0].startswith(f"{tmp_path / 'damaged.mp4'}: "), result.notes
    assert "damaged data, frames may be wrong" in damaged[0] and "warning: " + damaged[0] in result.summary()
    assert not [n for n in run_timeline(model, long_video, progress=False).notes if "decoder" in n]


@pytest.fixture(scope="module")
def step_run(tmp_path_factory):
    """A run on a --frame-step 3 cache (T = 4: clips of 4 frames spanning 12) of 30-frame coloured squares."""
    root = tmp_path_factory.mktemp("step-timeline")
    for name, colour in COLOURS.items():
        for i in range(3):
            frames = moving_square(30, (64, 64), direction=1, color=colour, seed=10 * i + len(name))
            write_video(root / "videos" / name / f"{name}_{i}.mp4", frames, fps=FPS)
    extract(root / "videos", root / "shards", frame_step=3, **TINY)
    run = root / "run"
    train_probe(root / "shards", "linear", run, epochs=3, batch_size=4, val_fraction=0.34, progress=False)
    return run, root


def test_a_frame_step_run_samples_windows_as_extract_did(step_run):
    run, root = step_run
    model = RunModel(run, device="cpu")
    assert model.frame_step == 3
    # the default window: K (T S + 1) = 13 frames, every S = 3, the anchor's clip linspace(0, 12, 4) capped at 11
    plan = plan_windows(FPS, model.frames, model.clips, None, None, model.typical_duration(), model.frame_step)
    assert (plan.length, plan.stride, plan.frame_step) == (13, 3, 3)
    assert plan.window(5).indices.tolist() == [[5, 9, 13, 16]]
    assert Recognizer(run, fps=FPS).plan == plan
    shards = open_shards(root / "shards")
    probe = load_probe(run)[1].eval()
    for video in ("red/red_0.mp4", "blue/blue_2.mp4"):
        # a window the length of a training video: the frames extract sampled from it, and the probe's logits on
        # the cached tokens (the backbone ran on other batches: float16 tokens may differ in their last bit, see
        # test_recognizer_gives_timeline_logits)
        result = run_timeline(model, root / "videos" / video, window=30 / FPS, progress=False)
        assert len(result.results) == 1
        (row,) = np.nonzero(shards.videos == video)[0]
        assert result.results[0].window.indices.tolist() == [shards.frame_indices[row].tolist()]
        with torch.no_grad():
            cached = probe(torch.from_numpy(shards.read_tokens([row]).astype(np.float32)))[0].numpy()
        np.testing.assert_allclose(result.results[0].logits, cached, rtol=0, atol=1e-3)
