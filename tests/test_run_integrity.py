"""Runs that cannot be clobbered, swapped or used after failing (issue 23, cases 2-4): one writer per run
directory, checkpoints bound to their run by a recorded sha256, and a diverged run marked failed and refused by
every consumer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.cache.locking import LockedError
from step_cache.recognition.model import RunModel
from step_cache.recognition.recognizer import Recognizer
from step_cache.recognition.timeline import timeline
from step_cache.recognition.videos import predict_videos
from step_cache.report.build import build_report, format_comparison, load_run
from step_cache.sweeps.results import BEST_RUN, retrain_best
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training import run_checkpoints, runs
from step_cache.training.config import make_config
from step_cache.training.epoch_loop import NonFiniteLossError
from step_cache.training.evaluation import evaluate, predict
from step_cache.training.run_checkpoints import CheckpointMismatchError
from step_cache.training.run_lock import hold_run_dir
from step_cache.training.run_status import FailedRunError
from step_cache.training.trainer import train_probe

_register_commands()

FAST = {"epochs": 2, "batch_size": 4, "lr": 3e-3, "progress": False}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


class Killed(Exception):
    """Stands for a kill at a chosen point of a run."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("integrity") / "shards"
    write_token_cache(directory, videos_per_class=8, dim=16)
    return directory


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(result, *needles):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- case 2: one writer per run directory ---------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_live_holder_and_a_dead_ones_lock_is_taken_over(cache, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "cli", "train-probe", str(cache), "--probe", "linear", "--out", str(run),
               "--epochs", "100000", "--batch-size", "4", "--quiet"]  # fmt: skip
    writer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not runs.read_epoch_log(run):  # A is training: it has committed an epoch
            assert writer.poll() is None, writer.stderr.read().decode()
            assert time.monotonic() < deadline, "run A did not complete an epoch"
            time.sleep(0.2)
        config_before = (run / runs.CONFIG).read_bytes()
        holder = f"pid {writer.pid} "
        with pytest.raises(LockedError, match=f"another train-probe run \\({holder}"):
            train_probe(cache, "linear", run, overwrite=True, **FAST)
        with pytest.raises(LockedError, match=holder):
            train_probe(cache, "linear", run, resume=True, epochs=100000, batch_size=4, progress=False)
        with pytest.raises(LockedError, match=holder):
            train_probe(cache, "linear", run, overwrite=True, seeds=2, **FAST)
        one_error_line(
            invoke("train-probe", cache, "--probe", "linear", "--out", run, "--overwrite", "--epochs", "1", "--quiet"),
            f"{run}: another train-probe run ({holder}",
        )
        # Nothing of A's was touched: its config is the same and it is still training.
        assert (run / runs.CONFIG).read_bytes() == config_before and writer.poll() is None
        epochs = len(runs.read_epoch_log(run))
        assert epochs >= 1 and (run / runs.BEST).is_file()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    # The holder died without releasing: the kernel dropped its flock, so the next writer takes over.
    result = train_probe(cache, "linear", run, overwrite=True, **FAST)
    assert json.loads((run / runs.CONFIG).read_text())["config"]["epochs"] == 2
    assert len(result.history) == 2 and not (run / ".lock").exists()


def test_sweep_retrain_takes_the_same_run_directory_lock(cache, tmp_path):
    sweep = tmp_path / "sweep"
    best = {"config": {"probe": "linear", "epochs": 1, "batch_size": 4, "lr": 3e-3}}
    current = make_config("linear", {"progress": False})
    with hold_run_dir(sweep / BEST_RUN):  # another process's lock, as far as flock is concerned (its own fd)
        with pytest.raises(LockedError, match=f"{sweep / BEST_RUN}: another train-probe run \\(pid {os.getpid()} "):
            retrain_best(sweep, cache, best, current)
        assert not (sweep / BEST_RUN / runs.CONFIG).exists()
    assert retrain_best(sweep, cache, best, current).metrics["epochs"] == 1


def test_a_run_refused_before_it_wrote_anything_leaves_no_folder(tmp_path):
    with pytest.raises(ValueError, match="cache directory does not exist"):
        train_probe(tmp_path / "no-cache", "linear", tmp_path / "runs" / "r", **FAST)
    assert not (tmp_path / "runs" / "r").exists()


# --- case 3: checkpoints bound to their run -------------------------------------------------------------------


def test_identical_runs_write_byte_identical_checkpoints(cache, tmp_path):
    """torch.save to a path names the archive's root folder after the (temporary, pid-named) file."""
    here = train_probe(cache, "linear", tmp_path / "here", **FAST)
    command = [sys.executable, "-m", "cli", "train-probe", str(cache), "--probe", "linear", "--out",
               str(tmp_path / "there"), "--epochs", "2", "--batch-size", "4", "--lr", "3e-3", "--quiet"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, env=ENV, timeout=300)  # another process, another pid
    for name in (runs.BEST, runs.LAST):
        assert (here.run_dir / name).read_bytes() == (tmp_path / "there" / name).read_bytes(), name
    sums = run_checkpoints.read_sums(here.run_dir)
    assert set(sums) == {runs.BEST, runs.LAST}
    assert sums[runs.BEST]["sha256"] == run_checkpoints.sha256((here.run_dir / runs.BEST).read_bytes())


def consumers(run: Path, cache: Path, tmp_path: Path) -> dict:
    """Every command that loads a run's checkpoint. A synthetic cache's run has no backbone: each one must refuse
    before it would need one (predict --videos: before any video is decoded)."""
    return {
        "evaluate": lambda: evaluate(run, cache),
        "predict --features": lambda: predict(run, cache, tmp_path / "p.csv"),
        "predict --videos": lambda: predict_videos(run, tmp_path / "no-videos", tmp_path / "v.csv"),
        "timeline": lambda: timeline(run, tmp_path / "no.mp4", tmp_path / "t"),
        "Recognizer": lambda: Recognizer(run),
        "RunModel": lambda: RunModel(run),
    }


def test_a_checkpoint_from_another_run_or_edited_is_refused_by_every_consumer(cache, tmp_path):
    run = train_probe(cache, "linear", tmp_path / "a", **FAST).run_dir
    other = train_probe(cache, "linear", tmp_path / "b", **{**FAST, "seed": 1}).run_dir
    assert evaluate(run, cache)["clips"] > 0  # the run's own checkpoint loads
    own = (run / runs.BEST).read_bytes()
    shutil.copy(other / runs.BEST, run / runs.BEST)  # same shapes, another run
    for name, use in consumers(run, cache, tmp_path).items():
        with pytest.raises(CheckpointMismatchError, match=f"^{run / runs.BEST}: not the checkpoint this run wrote"):
            use()
        assert not (tmp_path / "p.csv").exists(), name
    one_error_line(invoke("evaluate", "--run", run, "--features", cache), f"{run / runs.BEST}: not the checkpoint")
    # Edited head weights: the run's own file, one number changed.
    state = torch.load(run / runs.LAST, weights_only=True)
    (run / runs.BEST).write_bytes(own)
    state["head.weight"][0, 0] += 1e-3
    torch.save(state, run / runs.BEST)
    with pytest.raises(CheckpointMismatchError, match="replaced or edited; put the run's own file back"):
        evaluate(run, cache)
    (run / runs.BEST).write_bytes(own)
    assert evaluate(run, cache)["clips"] > 0
    (run / runs.CHECKPOINT_SUMS).unlink()  # no record: the checkpoint cannot be tied to the run
    with pytest.raises(CheckpointMismatchError, match=r"records no checksum for best\.pt"):
        evaluate(run, cache)


@pytest.mark.parametrize("kill_at", [2, 3], ids=["epoch-1-best-unrecorded", "epoch-2-last-recorded-stale"])
def test_a_kill_between_a_checkpoint_and_its_record_is_refused_then_repaired_by_resume(
    cache, tmp_path, monkeypatch, kill_at
):
    """Writes per epoch: last_state.pt (commit), last.pt, its record, best.pt (when best), its record. A kill just
    before the kill_at-th record leaves a checkpoint whose record is missing or the previous file's."""
    options = {**FAST, "epochs": 4}
    straight = train_probe(cache, "linear", tmp_path / "straight", **options)
    calls = []
    real_record = run_checkpoints.record

    def record_or_die(run_dir, path, data):
        calls.append(path.name)
        if len(calls) == kill_at:
            raise Killed
        real_record(run_dir, path, data)

    monkeypatch.setattr(run_checkpoints, "record", record_or_die)
    with pytest.raises(Killed):
        train_probe(cache, "linear", tmp_path / "run", **options)
    monkeypatch.setattr(run_checkpoints, "record", real_record)
    run = tmp_path / "run"
    unrecorded = run / calls[-1]
    assert unrecorded.is_file()
    with pytest.raises(CheckpointMismatchError, match=f"^{unrecorded}: "):
        from step_cache.training.evaluation import load_probe

        load_probe(run, unrecorded.name)
    resumed = train_probe(cache, "linear", run, resume=True, **options)
    assert resumed.metrics["top1"] == straight.metrics["top1"]
    for name in (runs.BEST, runs.LAST):  # rewritten from the committed state, recorded, identical to a clean run
        assert (run / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    assert evaluate(run, cache)["top1"] == evaluate(tmp_path / "straight", cache)["top1"]


def test_seeds_a_kill_between_the_last_checkpoint_and_its_record_is_repaired_by_resume(cache, tmp_path, monkeypatch):
    """--seeds writes its checkpoints at the end: each seed's best.pt, then the run's own (kill before its record)."""
    options = {**FAST, "seeds": 2}
    straight = train_probe(cache, "linear", tmp_path / "straight", **options)
    real_record = run_checkpoints.record

    def record_or_die(run_dir, path, data):
        if path == run_dir / runs.BEST:
            raise Killed
        real_record(run_dir, path, data)

    monkeypatch.setattr(run_checkpoints, "record", record_or_die)
    with pytest.raises(Killed):
        train_probe(cache, "linear", tmp_path / "run", **options)
    monkeypatch.setattr(run_checkpoints, "record", real_record)
    run = tmp_path / "run"
    with pytest.raises(CheckpointMismatchError, match=r"records no checksum for best\.pt"):
        evaluate(run, cache)
    resumed = train_probe(cache, "linear", run, resume=True, **options)
    assert resumed.metrics["splits"] == straight.metrics["splits"]
    assert run_checkpoints.read_sums(run) == run_checkpoints.read_sums(tmp_path / "straight")
    assert evaluate(run, cache)["top1"] == evaluate(tmp_path / "straight", cache)["top1"]


def test_seed_checkpoints_are_recorded(cache, tmp_path):
    run = train_probe(cache, "linear", tmp_path / "seeds", seeds=2, **FAST).run_dir
    sums = run_checkpoints.read_sums(run)
    assert set(sums) == {runs.BEST, "seeds/seed-0/best.pt", "seeds/seed-1/best.pt"}
    assert sums[runs.BEST] == sums["seeds/seed-0/best.pt"]
    shutil.copy(run / "seeds" / "seed-1" / runs.BEST, run / runs.BEST)
    with pytest.raises(CheckpointMismatchError, match="not the checkpoint this run wrote"):
        evaluate(run, cache)


# --- case 4: a diverged run is a failed run -------------------------------------------------------------------


def late_divergence(record):
    """A divergence in epoch 2, after epoch 1 wrote best.pt (lr 1e8 does this for real on some CPUs)."""
    if record["epoch"] == 1:
        raise NonFiniteLossError("epoch 2/6", 3, 1e8, float("inf"), "gradient norm")


def test_a_diverged_run_is_refused_by_every_consumer_with_its_reason(cache, tmp_path):
    run = tmp_path / "diverged"
    with pytest.raises(NonFiniteLossError):
        train_probe(cache, "linear", run, **{**FAST, "epochs": 6}, on_epoch=late_divergence)
    assert (run / runs.BEST).is_file()  # an epoch before the divergence wrote it
    reason = json.loads((run / runs.FAILED).read_text())["reason"]
    assert reason.startswith("training diverged: the gradient norm became non-finite (inf) at epoch 2/6, batch 3")
    for name, use in consumers(run, cache, tmp_path).items():
        with pytest.raises(FailedRunError, match=f"^{run}: the run failed \\(training diverged: "):
            use()
        assert not (tmp_path / "p.csv").exists(), name
    one_error_line(invoke("evaluate", "--run", run, "--features", cache), "the run failed (training diverged")
    one_error_line(invoke("predict", "--run", run, "--features", cache, "--out", tmp_path / "p.csv"), "--overwrite")
    with pytest.raises(FailedRunError, match="resume=True would repeat it — start over with overwrite=True"):
        train_probe(cache, "linear", run, resume=True, **{**FAST, "epochs": 6})
    train_probe(cache, "linear", run, overwrite=True, **FAST)  # starting over clears the mark
    assert not (run / runs.FAILED).exists() and evaluate(run, cache)["clips"] > 0


@pytest.mark.parametrize("seeds", [1, 2])
def test_a_real_divergence_marks_the_run_failed(cache, tmp_path, seeds):
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError):
        train_probe(cache, "linear", run, seeds=seeds, epochs=6, batch_size=4, lr=1e8, progress=False)
    assert "training diverged" in json.loads((run / runs.FAILED).read_text())["reason"]
    with pytest.raises(FailedRunError, match="the run failed \\(training diverged"):
        evaluate(run, cache)


def test_report_of_a_good_and_a_diverged_run_reports_the_good_one_and_lists_the_failed(cache, tmp_path):
    good = train_probe(cache, "linear", tmp_path / "GOOD", **FAST).run_dir
    bad = tmp_path / "DIVERGED"
    with pytest.raises(NonFiniteLossError):
        train_probe(cache, "linear", bad, **{**FAST, "epochs": 6}, on_epoch=late_divergence)
    result = invoke("report", good, bad, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[2].startswith("GOOD ") and not any(line.startswith("DIVERGED ") for line in lines)
    assert f"warning: DIVERGED ({bad}) left out: the run failed (training diverged: the gradient norm" in result.stdout
    text = (tmp_path / "report" / "report.md").read_text()
    assert "warning: DIVERGED" in text and "## GOOD (linear)" in text and "## DIVERGED" not in text
    assert load_run(bad).problem.startswith("the run failed (training diverged")
    assert format_comparison([load_run(good), load_run(bad)]).count("\n") == 3  # header, rule, GOOD, warning
    with pytest.raises(ValueError, match="every run failed or has metrics that are not finite"):
        build_report([bad], tmp_path / "only-bad")


def test_a_finished_run_without_its_checkpoint_says_it_is_missing(cache, tmp_path):
    run = train_probe(cache, "linear", tmp_path / "run", **FAST).run_dir
    (run / runs.BEST).unlink()
    message = one_error_line(invoke("evaluate", "--run", run, "--features", cache))
    assert message == (
        f"error: {run / runs.BEST}: missing, but the run finished (metrics.json); the checkpoint was deleted or "
        "moved: put it back, re-run the command that trained it with --resume (--resume writes best.pt again from "
        "the run's committed state), or train again with --overwrite"
    )
    (run / runs.FINAL_METRICS).unlink()
    with pytest.raises(runs.RunError, match="missing; the run is unfinished \\(2 epoch\\(s\\) recorded; its process "
                       "stopped\\): continue it with the command that started it and resume=True"):  # fmt: skip
        evaluate(run, cache)
