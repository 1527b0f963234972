"""Issue 23 case 8: each message one line, true, naming the file or the option to change.

- ``predict --videos`` when no video can be read lists the reasons (not a temporary folder that is gone);
- ``predict --videos`` for a run trained on a ``compact --pool-patches`` cache (int8 read back as float16 too)
  compacts the extracted tokens the same way: the answers of ``predict --features`` on the run's cache; ``timeline``
  refuses such a run in one line before building the backbone;
- a run on a ``compact --project`` cache, or on synthetic tokens, is refused by ``predict --videos`` and
  ``timeline`` in one line, before any video is decoded or the backbone is built;
- a finished run whose best.pt was removed says the checkpoint is missing;
- ``timeline`` on a non-video prints the one-line error only (STEP_CACHE_DECODER_LOGS=1 keeps the decoders' lines).
"""

import os
import re
import subprocess
import sys

import pytest
from conftest import TINY

from step_cache.cache.compact import compact
from step_cache.extraction.engine import extract
from step_cache.recognition import videos as video_prediction
from step_cache.recognition.settings import RunSettingsError
from step_cache.synthetic.tokens import write_token_cache
from step_cache.synthetic.videos import write_class_folders
from step_cache.training.trainer import train_probe

ENV = {key: value for key, value in os.environ.items() if key != "STEP_CACHE_DECODER_LOGS"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Linear runs on a TINY cache of six videos, on its compacted forms (int8, then back to float16 with 2x2
    patches pooled; projected on 8 directions) and on synthetic tokens."""
    root = tmp_path_factory.mktemp("messages")
    write_class_folders(root / "videos", {"left": -1, "right": 1}, videos_per_class=3, num_frames=8)
    extract(root / "videos", root / "c", **TINY)
    compact(root / "c", root / "int8", dtype="int8", progress=False)
    compact(root / "int8", root / "pooled", dtype="float16", pool_patches=2, progress=False)
    compact(root / "c", root / "projected", project=8, progress=False)
    write_token_cache(root / "synthetic", num_classes=2, videos_per_class=6)
    for name in ("c", "pooled", "projected", "synthetic"):
        train_probe(root / name, "linear", root / f"run-{name}", epochs=1, batch_size=4, progress=False)
    return root


def cli(*args, env=None):
    command = [sys.executable, "-m", "cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env or ENV)


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_no_readable_video_lists_the_reasons(runs, tmp_path):
    folder = tmp_path / "bad" / "left"
    folder.mkdir(parents=True)
    (folder / "a.mp4").write_text("not a video\n")
    (folder / "b.mp4").write_bytes(b"")
    result = cli("predict", "--run", runs / "run-c", "--videos", tmp_path / "bad", "--out", tmp_path / "p.csv")
    assert result.returncode == 1
    errors = _error_lines(result)
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path / 'bad'}: none of the 2 videos could be read")
    assert "left/a.mp4: not a readable video" in errors[0] and "left/b.mp4: " in errors[0]
    assert "step-cache-predict-" not in result.stderr  # no temporary folder that no longer exists
    assert "--cache DIR keeps every reason in DIR/manifest.json" in errors[0]
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(
    ("run", "expected", "in_python"),
    [
        (
            "projected",
            "tokens projected on 8 principal directions (step-cache compact --project), which cannot be rebuilt from "
            "videos; to classify videos, train on a cache without --project",
            "tokens projected on 8 principal directions (compact(project=...)), which cannot be rebuilt from videos; "
            "to classify videos, train on a cache without project=",
        ),
        (
            "synthetic",
            "trained on synthetic tokens (no backbone or preprocessing to rebuild), so it cannot classify videos; use "
            "predict --features with a cache of the same kind",
            "trained on synthetic tokens (no backbone or preprocessing to rebuild), so it cannot classify videos; use "
            "predict(run_dir, cache) with a cache of the same kind",
        ),
    ],
)
def test_runs_whose_tokens_videos_cannot_give_are_refused_first(runs, tmp_path, monkeypatch, run, expected, in_python):
    def no_extraction(*args, **kwargs):
        raise AssertionError("extraction started")

    monkeypatch.setattr(video_prediction, "extract", no_extraction)
    with pytest.raises(RunSettingsError, match=r"^run_dir: .*" + re.escape(in_python) + "$"):
        video_prediction.predict_videos(runs / f"run-{run}", runs / "videos", tmp_path / "p.csv", progress=False)
    result = cli("predict", "--run", runs / f"run-{run}", "--videos", runs / "videos", "--out", tmp_path / "p.csv")
    assert result.returncode == 1 and "Traceback" not in result.stderr and "KeyError" not in result.stderr
    assert result.stderr.strip().splitlines() == _error_lines(result) and len(_error_lines(result)) == 1
    assert expected in _error_lines(result)[0]
    if run == "projected":  # timeline rebuilds the backbone the same way, so refuses the same runs
        video = runs / "videos" / "left" / "left_0.mp4"
        timeline = cli("timeline", video, "--run", runs / f"run-{run}", "--out", tmp_path / "t")
        assert timeline.returncode == 1 and _error_lines(timeline) == _error_lines(result)


def test_a_pooled_run_predicts_videos_like_its_cache(runs, tmp_path):
    out = tmp_path / "videos.csv"
    result = cli("predict", "--run", runs / "run-pooled", "--videos", runs / "videos", "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    cached = tmp_path / "c.csv"
    from_cache = cli("predict", "--run", runs / "run-pooled", "--features", runs / "pooled", "--out", cached)
    assert from_cache.returncode == 0, from_cache.stderr
    # the same frames, backbone, int8 rounding, pooling of stored values and probe: the same CSV, to the digit
    assert out.read_text() == cached.read_text() and len(out.read_text().splitlines()) == 7
    timeline = cli("timeline", runs / "videos" / "left" / "left_0.mp4", "--run", runs / "run-pooled", "--out",
                   tmp_path / "t")  # fmt: skip
    assert timeline.returncode == 1 and _error_lines(timeline) == [
        "error: --run: the run was trained on a cache rewritten by step-cache compact (--pool-patches 2: patches "
        "averaged from stored tokens; --dtype float16: int8 tokens read back), whose tokens timeline and "
        "Recognizer do not reproduce frame by frame; use predict --videos (which compacts the same way), or train "
        "on a cache extracted with those settings"
    ]


def test_a_finished_run_without_best_pt_says_it_is_missing(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "run-c", run)
    (run / "best.pt").unlink()
    for command in (
        ("evaluate", "--run", run, "--features", runs / "c"),
        ("predict", "--run", run, "--videos", runs / "videos", "--out", tmp_path / "p.csv"),
    ):
        result = cli(*command)
        assert result.returncode == 1
        assert _error_lines(result) == [
            f"error: {run / 'best.pt'}: missing, but the run finished (metrics.json); the checkpoint was deleted or "
            "moved: put it back, re-run the command that trained it with --resume (--resume writes best.pt again "
            "from the run's committed state), or train again with --overwrite"
        ]


def test_timeline_on_a_non_video_prints_one_line(runs, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("this is not a video\n")
    result = cli("timeline", notes, "--run", runs / "run-c", "--out", tmp_path / "t", "--window", "1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {notes}: not a readable video (invalid data found when processing input: not a video, or a "
        "damaged or cut-short one)"
    ]
    loud = cli("timeline", notes, "--run", runs / "run-c", "--out", tmp_path / "t", "--window", "1",
               env={**ENV, "STEP_CACHE_DECODER_LOGS": "1"})  # fmt: skip
    assert loud.returncode == 1 and len(loud.stderr.strip().splitlines()) > 1  # FFmpeg/decord lines kept
    assert loud.stderr.strip().splitlines()[-1] == result.stderr.strip()


def test_labels_the_run_does_not_know_are_named_with_their_count(runs, tmp_path):
    annotations = tmp_path / "ann.csv"
    annotations.write_text("path,label\nleft/left_0.mp4,left\nright/right_0.mp4,up\nright/right_1.mp4,up\n")
    out = tmp_path / "p.csv"
    result = cli("predict", "--run", runs / "run-c", "--videos", runs / "videos", "--annotations", annotations,
                 "--out", out, "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "not trained on" in line]
    assert warnings == [
        "2 of 3 videos are labelled with class(es) the run was not trained on: up (2); no prediction can "
        "match their label (the run knows 2: left, right), so leave them out of any accuracy counted from the CSV"
    ]
    labels = [line.split(",")[2] for line in out.read_text().splitlines()[1:]]
    assert sorted(labels) == ["left", "up", "up"]  # the label as the annotations give it


def test_labels_the_run_knows_draw_no_warning(runs, tmp_path, caplog):
    from step_cache.training.evaluation import predict

    predict(runs / "run-c", runs / "c", tmp_path / "p.csv")
    assert not [r for r in caplog.records if "not trained on" in r.getMessage()]
