"""Cases found by the fourth fault round (issue 31, faultround/): bad input refused in one line naming the option,
never a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.extraction.backbones import BackboneError, load_backbone
from step_cache.interface import command_line

_register_commands()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("size", [0, -5])
def test_an_image_size_below_one_is_refused_naming_it(size):
    with pytest.raises(BackboneError, match=rf"^image_size={size} must be >= 1$"):
        load_backbone("vit-tiny", "random", image_size=size)


def test_frames_smaller_than_one_patch_are_refused_naming_the_size_and_patch():
    # vit-tiny's patches are 16 px: an 8 px frame has no patch at all (the forward pass raised a RuntimeError)
    with pytest.raises(BackboneError, match=r"^vit_tiny_patch16_224\S*: image_size=8 gives 8x8 px frames, smaller "
                                            r"than one 16x16 px patch$"):  # fmt: skip
        load_backbone("vit-tiny", "random", image_size=8)


@pytest.mark.parametrize("size, problem", [(-5, "--image-size -5 must be >= 1"), (8, "--image-size 8 gives 8x8")])
def test_extract_refuses_a_bad_image_size_in_one_line_before_writing(video_tree, tmp_path, size, problem):
    out = tmp_path / "cache"
    args = ["extract", "--videos", video_tree, "--out", out, "--backbone", "vit-tiny", "--weights", "random"]
    line = one_error_line(invoke(*args, "--frames", 2, "--image-size", size, "--quiet", "--workers", 0))
    assert line.startswith("error: ") and problem in line, line
    assert not out.exists()


def test_a_shard_size_of_zero_is_refused_naming_the_option(video_tree, tmp_path):
    args = ["extract", "--videos", video_tree, "--out", tmp_path / "c", "--backbone", "vit-tiny", "--weights", "random"]
    line = one_error_line(invoke(*args, "--shard-size-mb", 0, "--quiet"))
    assert line == "error: --shard-size-mb 0.0 must be positive (MiB)", line
    line = one_error_line(invoke("compact", tmp_path, "--out", tmp_path / "o", "--shard-size-mb", -1, "--quiet"))
    assert "--shard-size-mb -1.0 must be positive (MiB)" in line, line


def test_resume_of_an_out_without_a_run_says_it_starts_a_new_one(tmp_path, caplog):
    # --resume with a mistyped --out used to start over silently, as if it had resumed
    import logging

    from step_cache.training.runs import open_run_dir

    run = tmp_path / "typo"
    with caplog.at_level(logging.INFO, logger="step_cache"):
        assert open_run_dir(run, {"config": {}}, resume=True) is None
    assert f"{run}: no run to resume here (no config.json); starting a new run" in caplog.text
    assert (run / "config.json").is_file()


def test_repeats_frames_is_true_exactly_when_a_clip_takes_a_frame_twice():
    from step_cache.extraction.sampling import frame_step_indices, repeats_frames, segment_indices

    assert repeats_frames(segment_indices(3, 4)) and not repeats_frames(segment_indices(4, 4))
    # --frame-step 4 x 4 frames spans 16 frames: a 9-frame video pads the clip with its last frame
    assert frame_step_indices(9, 4, 4).tolist() == [[0, 7, 7, 7]] and repeats_frames(frame_step_indices(9, 4, 4))
    assert not repeats_frames(frame_step_indices(40, 4, 4)) and not repeats_frames(frame_step_indices(9, 4, 2))
    # two test-view segments of a long video, each clip whole
    assert not repeats_frames(frame_step_indices(100, 4, 2, clips=2))


def test_a_video_shorter_than_a_frame_step_clip_is_reported_short(tmp_path):
    from step_cache.cache.manifest import read_manifest
    from step_cache.extraction.engine import extract
    from step_cache.synthetic.videos import write_class_folders

    write_class_folders(tmp_path / "v", {"left": -1, "right": 1}, videos_per_class=1, num_frames=9)
    options = {"backbone": "vit-tiny", "weights": "random", "frames": 4, "image_size": 32, "workers": 0}
    report = extract(tmp_path / "v", tmp_path / "c", frame_step=4, progress=False, **options)
    assert sorted(report.short) == ["left/left_0.mp4", "right/right_0.mp4"]
    assert "; 2 short (fewer frames than a clip spans (4 frames 4 apart), frames repeated; " in report.summary()
    assert read_manifest(tmp_path / "c").too_short == "fewer frames than a clip spans (4 frames 4 apart)"
    report = extract(tmp_path / "v", tmp_path / "c2", frame_step=2, progress=False, **options)
    assert report.short == []  # 4 frames 2 apart fit in 9


def test_a_torn_last_line_of_metrics_jsonl_is_dropped_and_a_damaged_middle_line_named(tmp_path):
    # A full disk (or a kill) in the middle of an epoch line's append left '{"epoch": 3, "val_t'; evaluate then
    # raised a JSONDecodeError traceback. Lines after the last commit are dropped on --resume anyway.
    from step_cache.training.runs import RunError, read_epoch_log

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "val_t')
    assert read_epoch_log(tmp_path) == [{"epoch": 1}, {"epoch": 2}]
    log.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(RunError, match=rf"^{log}: line 2 is not JSON \(the file was edited or damaged\)$"):
        read_epoch_log(tmp_path)


def test_a_disk_full_line_without_a_known_path_names_no_path_and_no_other_disks_free_space():
    from step_cache.cache.disk_space import disk_full_message

    line = disk_full_message("", "the command")
    assert line == "out of disk space (No space left on device); the command stopped: free some space and re-run the " \
        "same command to resume"  # fmt: skip


def test_a_sweep_and_a_training_run_never_share_an_out(tmp_path):
    # sweep --out RUN wrote trials.json beside a run's files (report then saw a sweep only), and the converse
    from step_cache.sweeps.results import check_out_first
    from step_cache.sweeps.search import SweepError
    from step_cache.training.runs import RunError, refuse_existing_run

    run, sweep = tmp_path / "run", tmp_path / "sweep"
    run.mkdir()
    (run / "config.json").write_text("{}")
    sweep.mkdir()
    (sweep / "trials.json").write_text(json.dumps({"trials": []}))
    expected = rf"^{run}: holds a training run \(config.json\); a sweep writes its own files: choose another --out$"
    with pytest.raises(SweepError, match=expected), command_line():
        check_out_first(run, shared=False)
    for resume, overwrite in ((False, False), (True, False), (False, True)):
        with pytest.raises(RunError, match=rf"^{sweep}: holds a sweep \(trials.json\); choose another out=$"):
            refuse_existing_run(sweep, resume, overwrite)


def test_an_exhausted_grid_says_how_many_trials_the_sweep_ends_with(tmp_path, caplog):
    # It said "(0 of 10 trials done)" at the moment of asking, then the sweep finished 4: a wrong-looking figure.
    import logging

    from step_cache.sweeps.space import build_space
    from step_cache.sweeps.study import run_sweep
    from step_cache.synthetic.tokens import write_token_cache

    write_token_cache(tmp_path / "cache", task="order", num_classes=2, videos_per_class=6, frames=4, dim=16)
    space = build_space("linear", ["lr=0.001,0.01", "weight_decay=0,0.1"])
    with caplog.at_level(logging.INFO, logger="step_cache"):
        result = run_sweep(tmp_path / "cache", "linear", tmp_path / "sweep", space=space, trials=10, parallel=8,
                           pruner="none", epochs=1, batch_size=8, progress=False, retrain=False)  # fmt: skip
    line = "the search space has 4 configurations and every one now has a trial: no more to ask; the sweep ends " \
        "with these 4 trials (10 asked for)"  # fmt: skip
    assert line in caplog.text
    trials = json.loads((tmp_path / "sweep" / "trials.json").read_text())["trials"]
    assert len([t for t in trials if t["state"] == "COMPLETE"]) == 4
    assert result is not None


def test_a_damaged_metrics_json_is_one_line_naming_it(tmp_path):
    # A metrics.json cut in half (or edited) made report, evaluate --json readers raise a JSONDecodeError traceback
    from step_cache.training.runs import RunError, read_final_metrics

    (tmp_path / "metrics.json").write_text('{"format_version": 2, "test": {"top1": 0.')
    with pytest.raises(RunError, match=rf"^{tmp_path / 'metrics.json'}: unreadable metrics \(.*\); delete it and "
                                       r"repeat the run's command with resume=True to write it again from the run's "
                                       r"committed state$"):  # fmt: skip
        read_final_metrics(tmp_path)


@pytest.mark.parametrize("marker", ["config.json", "trials.json"])
def test_extract_refuses_an_out_holding_a_training_run_or_a_sweep(video_tree, tmp_path, marker):
    # extract --overwrite into a run's directory wrote a cache beside the run's files (fault round 4, I17)
    from step_cache.extraction.engine import ExtractionError, extract

    out = tmp_path / "run"
    out.mkdir()
    (out / marker).write_text("{}")
    kind = "a training run" if marker == "config.json" else "a sweep"
    with pytest.raises(ExtractionError, match=rf"^{out}: holds {kind} \({marker}\); a cache needs a directory of its "
                                              r"own: choose another out="):  # fmt: skip
        extract(video_tree, out, backbone="vit-tiny", weights="random", frames=2, image_size=32, workers=0,
                overwrite=True, progress=False)  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [marker]
