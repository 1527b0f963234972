"""Bad input refused in one line naming the option or the file (issue 31): ``--min-confidence`` outside [0, 1]
or NaN, a ``trials.json`` of the wrong shape (sweep, report, plots), and a refused old-format sweep leaves no new
``study.journal``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.recognition.segments import merge_segments
from step_cache.sweeps.results import read_trials
from step_cache.sweeps.search import SweepError
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.trainer import train_probe

_register_commands()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("value", [2.0, -1.0, math.nan, 1.0001])
def test_min_confidence_outside_0_to_1_is_refused(value):
    starts = np.arange(4.0)
    probabilities = np.array([[0.9, 0.1]] * 4)
    with pytest.raises(ValueError, match=r"min_confidence= must be from 0 to 1 .*, got "):
        merge_segments(starts, starts + 1, probabilities, ["a", "b"], min_confidence=value)


def test_min_confidence_ends_are_accepted_and_mean_what_they_say():
    starts = np.arange(4.0)
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.9, 0.1], [1.0, 0.0]])
    every = merge_segments(starts, starts + 1, probabilities, ["a", "b"], min_confidence=0.0)
    assert [(s.label, s.windows) for s in every] == [("a", 4)]
    certain = merge_segments(starts, starts + 1, probabilities, ["a", "b"], min_confidence=1.0)
    assert [(s.label, s.windows) for s in certain] == [("a", 1)]


def test_timeline_refuses_a_bad_min_confidence_before_any_work(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    for value in ("2", "nan", "-1"):
        line = one_error_line(invoke("timeline", video, "--run", tmp_path / "no-run", "--out", tmp_path / "t",
                                     "--min-confidence", value))  # fmt: skip
        assert "--min-confidence must be from 0 to 1" in line and line.endswith(f"got {float(value)}"), line


@pytest.mark.parametrize(
    "content, problem",
    [
        ([{"number": 0, "state": "COMPLETE"}], "a JSON list, not an object"),
        ({"metric": "top1", "space": {}}, "no list of 'trials'"),
        ({"metric": "top1", "trials": []}, "no 'space' object or 'metric'"),
        ({"metric": "top1", "space": {}, "trials": [3]}, "a trial without number, params, state"),
        (
            {"metric": "top1", "space": {}, "trials": [{"number": 0, "state": "COMPLETE"}]},
            "a trial without number, params, state",
        ),
    ],
)
def test_a_trials_json_of_the_wrong_shape_is_one_line(tmp_path, content, problem):
    path = tmp_path / "trials.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SweepError) as error:
        read_trials(path, tables=True)  # what report and the plots read
    assert str(error.value) == (f"{path}: not a sweep's trials.json ({problem}); move it away or choose another out=")


def test_sweep_and_report_refuse_a_bare_list_trials_json(tmp_path):
    shards = tmp_path / "shards"
    write_token_cache(shards, num_classes=2, videos_per_class=4, dim=8)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "trials.json").write_text(json.dumps([{"number": 0, "state": "COMPLETE", "params": {}}]))
    expected = f"{out / 'trials.json'}: not a sweep's trials.json (a JSON list, not an object)"
    line = one_error_line(invoke("sweep", shards, "--param", "lr=log:1e-4..1e-2", "--trials", 1, "--epochs", 1,
                                 "--out", out, "--quiet", "--no-plots"))  # fmt: skip
    assert line.startswith(f"error: {expected}"), line
    assert sorted(p.name for p in out.iterdir()) == ["trials.json"]  # no study.journal, no lock left behind
    run = train_probe(shards, "linear", tmp_path / "run", epochs=1, batch_size=4, progress=False).run_dir
    line = one_error_line(invoke("report", run, out, "--out", tmp_path / "report"))
    assert expected in line, line


def test_a_refused_old_format_sweep_leaves_no_new_study_journal(tmp_path):
    shards = tmp_path / "shards"
    write_token_cache(shards, num_classes=2, videos_per_class=4, dim=8)
    out = tmp_path / "old"
    out.mkdir()
    old = {"metric": "top1", "space": {}, "trials": [{"number": 0, "state": "COMPLETE", "params": {}, "value": 0.5}]}
    (out / "trials.json").write_text(json.dumps(old))  # a sweep from before sweeps resumed: no study.journal
    line = one_error_line(invoke("sweep", shards, "--param", "lr=log:1e-4..1e-2", "--trials", 1, "--epochs", 1,
                                 "--out", out, "--quiet", "--no-plots"))  # fmt: skip
    assert "holds 1 finished trials of another study (None, not resumable: no study.journal)" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["trials.json"]


def test_threads_above_the_cpus_this_process_may_use_are_capped_with_one_line(caplog):
    import torch

    from step_cache.cpu_budget import apply_threads, available_cpus

    budget = available_cpus()
    before = torch.get_num_threads()
    try:
        with caplog.at_level("WARNING", logger="step_cache.cpu_budget"):
            choice = apply_threads(budget.count + 1000)
        assert choice.count == budget.count == torch.get_num_threads()
        assert choice.source == f"--threads {budget.count + 1000}, capped at the {budget.source}"
        assert [r.getMessage() for r in caplog.records] == [
            f"--threads {budget.count + 1000} is more than the {budget.count} CPU(s) this process may use "
            f"({budget.source}): using {budget.count}"
        ]
        assert apply_threads(1).count == 1  # within the budget: as asked
    finally:
        torch.set_num_threads(before)


def test_an_annotation_csv_with_a_utf8_byte_order_mark_is_read(tmp_path):
    from step_cache.catalog import read_annotations

    csv = tmp_path / "a.csv"
    csv.write_bytes("\ufeffpath,label,split\nleft/a.mp4,left,train\n".encode())
    items = read_annotations(csv)
    assert [(i.path, i.label, i.split) for i in items] == [("left/a.mp4", "left", "train")]


@pytest.mark.parametrize("path", ["../elsewhere/a.mp4", "/abs/a.mp4", "left/../../a.mp4"])
def test_annotation_paths_outside_the_videos_root_are_refused_unless_allowed(tmp_path, path):
    from step_cache.catalog import CatalogError, read_annotations

    csv = tmp_path / "a.csv"
    csv.write_text(f"path,label\nleft/ok.mp4,left\n{path},right\n")
    with pytest.raises(CatalogError) as error:
        read_annotations(csv)
    assert str(error.value) == (
        f"{csv}:3: path {path} leaves the videos root (absolute or with '..'); paths are relative to videos=: "
        "move the file under it, or pass allow_outside=True"
    )
    assert [i.path for i in read_annotations(csv, allow_outside=True)] == ["left/ok.mp4", path]


def test_extract_allow_outside_reads_a_video_beside_the_root(tmp_path):
    from conftest import TINY

    from step_cache.cache.manifest import read_manifest
    from step_cache.extraction.engine import extract
    from step_cache.synthetic.videos import write_class_folders

    write_class_folders(tmp_path / "root", {"left": -1}, videos_per_class=1, num_frames=8)
    write_class_folders(tmp_path / "beside", {"right": 1}, videos_per_class=1, num_frames=8)
    csv = tmp_path / "root" / "annotations.csv"
    csv.write_text("path,label\nleft/left_0.mp4,left\n../beside/right/right_0.mp4,right\n")
    line = one_error_line(invoke("extract", "--annotations", csv, "--out", tmp_path / "refused", "--backbone",
                                 "vit-tiny", "--weights", "random", "--quiet"))  # fmt: skip
    assert "leaves the videos root" in line and "--allow-outside" in line
    extract(None, tmp_path / "c", annotations=csv, allow_outside=True, **TINY)
    assert read_manifest(tmp_path / "c").num_videos == 2
