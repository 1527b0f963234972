"""Messages that point the right way for runs that have not finished: a run killed with SIGKILL (one seed or
``--seeds``) is called unfinished, with ``--resume``, by evaluate, predict and report; a run still training (its
lock held) is said to be training; ``--resume`` of a finished run whose best.pt was deleted writes it again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import test_run_integrity as integrity
import torch

from step_cache.cache.locking import holder
from step_cache.training import runs
from step_cache.training.evaluation import evaluate
from step_cache.training.run_lock import hold_run_dir
from step_cache.training.run_status import unfinished
from step_cache.training.trainer import train_probe

FAST = {"epochs": 2, "batch_size": 4, "lr": 3e-3, "progress": False}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
cache, invoke = integrity.cache, integrity.invoke  # the same small cache (a fixture) and CLI runner


def error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_seeds_run_killed_with_sigkill_is_called_unfinished_with_resume(cache, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "cli", "train-probe", cache, "--probe", "linear", "--seeds", "2", "--epochs",
               "400", "--batch-size", "4", "--no-early-stop", "--out", run, "--quiet"]  # fmt: skip
    process = subprocess.Popen(list(map(str, command)), env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / runs.STATE).is_file():  # its first commit (after the first epoch)
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no commit within 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (run / runs.BEST).exists() and holder(run) is None
    expected = f"{run / runs.BEST}: missing; the run is unfinished ("
    for command in (("evaluate", "--run", run, "--features", cache),
                    ("predict", "--run", run, cache, "--out", tmp_path / "p.csv")):  # fmt: skip
        line = error_line(invoke(*command))
        assert line.startswith(f"error: {expected}"), line
        assert line.endswith("its process stopped): continue it with the command that started it and --resume"), line
        assert "--overwrite" not in line
    assert not (tmp_path / "p.csv").exists()
    line = error_line(invoke("report", run, "--out", tmp_path / "report"))
    assert f"{run}: the run is unfinished (" in line and "--resume" in line, line


def test_a_run_still_training_is_said_to_be_training(cache, tmp_path, caplog):
    run = train_probe(cache, "linear", tmp_path / "run", **FAST).run_dir
    (run / runs.FINAL_METRICS).unlink()  # as if its last epoch were still running
    with hold_run_dir(run):  # the trainer's lock: this process stands for the live trainer
        note = unfinished(run)
        assert note.startswith(f"{run}: the run is still training (pid {os.getpid()} on ")
        with caplog.at_level("WARNING"):
            evaluate(run, cache)  # its best epoch so far can be evaluated, with the note
        assert any("still training" in r.getMessage() and "best epoch so far" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        (run / runs.BEST).unlink()
        with pytest.raises(runs.RunError, match=re.escape("best.pt: missing; the run is still training (pid ")):
            evaluate(run, cache)
    assert holder(run) is None and "unfinished" in unfinished(run)


@pytest.mark.parametrize("seeds", [1, 2])
def test_resume_of_a_finished_run_restores_a_deleted_best_pt(cache, tmp_path, seeds):
    run = train_probe(cache, "linear", tmp_path / "run", **FAST, seeds=seeds).run_dir
    original = (run / runs.BEST).read_bytes()
    figures = evaluate(run, cache)
    (run / runs.BEST).unlink()
    result = invoke("train-probe", cache, "--probe", "linear", "--out", run, "--resume", "--epochs", 2,
                    "--batch-size", 4, "--lr", 3e-3, "--seeds", seeds, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (run / runs.BEST).read_bytes() == original
    assert evaluate(run, cache)["top1"] == figures["top1"]  # and its checksum is recorded: evaluate accepts it


def test_resume_says_when_a_deleted_best_pt_cannot_be_restored(cache, tmp_path):
    run = train_probe(cache, "linear", tmp_path / "run", **FAST).run_dir
    state = torch.load(run / runs.STATE, weights_only=False)
    state["best_model"] = None  # a state written before best weights were part of it
    runs.save_state(state, run / runs.STATE)
    (run / runs.BEST).unlink()
    with pytest.raises(runs.RunError, match=re.escape(
            "best.pt: missing, and the run's committed state does not hold its best weights: put the file back or "
            "train again with overwrite=True")):  # fmt: skip
        train_probe(cache, "linear", run, **FAST, resume=True)
