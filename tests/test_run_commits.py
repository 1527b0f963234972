"""Commit cadence: a run commits after its first epoch, every COMMIT_EVERY_S seconds and after its last; a kill
between commits resumes from the last one and ends exactly like a straight run. And quiet progress: a default run
prints a few lines and one bar, metrics.jsonl has one line per epoch, --verbose prints every epoch."""

import math
import os
import re
import subprocess
import sys

import pytest

from step_cache.synthetic.tokens import write_token_cache
from step_cache.training import run_commits, runs, trainer
from step_cache.training.stacking import seeds
from step_cache.training.trainer import train_probe

OPTIONS = {"epochs": 5, "batch_size": 8, "lr": 3e-3, "progress": False, "probe_options": {"dropout": 0.2}}
TIMING = {"train_s", "data_wait_s", "clips_per_s", "eval_s"}
FINAL_TIMING = {"train_time_s", "train_clips_per_s", "data_wait_share", "data_mode"}


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokens")
    write_token_cache(directory, videos_per_class=8, clips_per_video=2, dim=16)
    return directory


def count_commits(monkeypatch) -> list[int]:
    epochs: list[int] = []
    real = runs.save_state

    def save_state(state, path):
        if path.name == runs.STATE:  # not a checkpoint written through the same function
            epochs.append(int(state["epoch"]))
        return real(state, path)

    monkeypatch.setattr(runs, "save_state", save_state)
    return epochs


@pytest.mark.parametrize("every, expected", [(math.inf, [1, 5]), (0.0, [1, 2, 3, 4, 5])], ids=["slow", "every"])
@pytest.mark.parametrize("n_seeds", [1, 2])
def test_commits_after_the_first_and_last_epoch_and_when_due(cache, tmp_path, monkeypatch, every, expected, n_seeds):
    monkeypatch.setattr(run_commits, "COMMIT_EVERY_S", every)
    commits = count_commits(monkeypatch)
    train_probe(cache, "step", tmp_path / "run", seeds=n_seeds, **OPTIONS)
    assert commits == expected
    assert [r["epoch"] for r in runs.read_epoch_log(tmp_path / "run")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("n_seeds", [1, 2])
def test_a_kill_between_commits_resumes_from_the_last_commit_exactly(cache, tmp_path, monkeypatch, n_seeds):
    straight = train_probe(cache, "step", tmp_path / "straight", seeds=n_seeds, **OPTIONS)
    monkeypatch.setattr(run_commits, "COMMIT_EVERY_S", math.inf)  # commits after epoch 1 and 5 only
    module = trainer if n_seeds == 1 else seeds
    real = module.append_epoch

    def append_or_die(run_dir, record):
        if record["epoch"] == 4:
            raise Killed  # killed in epoch 4: epochs 2 and 3 were appended, never committed
        real(run_dir, record)

    monkeypatch.setattr(module, "append_epoch", append_or_die)
    with pytest.raises(Killed):
        train_probe(cache, "step", tmp_path / "cut", seeds=n_seeds, **OPTIONS)
    cut = tmp_path / "cut"
    assert [r["epoch"] for r in runs.read_epoch_log(cut)] == [1, 2, 3]  # appended live
    assert runs.load_state(cut / runs.STATE)["epoch"] == 1 and not (cut / runs.FINAL_METRICS).exists()
    monkeypatch.setattr(module, "append_epoch", real)
    seen: list[int] = []
    resumed = train_probe(cache, "step", cut, seeds=n_seeds, resume=True, on_epoch=lambda r: seen.append(r["epoch"]),
                          **OPTIONS)  # fmt: skip
    assert seen == [2, 3, 4, 5]  # from the last commit; the uncommitted lines were dropped, then written again
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in runs.read_epoch_log(cut)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in runs.read_epoch_log(straight.run_dir)]
    assert {k: v for k, v in resumed.metrics.items() if k not in FINAL_TIMING} == {
        k: v for k, v in straight.metrics.items() if k not in FINAL_TIMING
    }
    assert (cut / runs.BEST).read_bytes() == (straight.run_dir / runs.BEST).read_bytes()


def run_cli(cache, out, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cli", "train-probe", str(cache), "--probe", "linear", "--epochs", "40",
               "--batch-size", "4", "--out", str(out), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # bytes: text mode would turn the bar's carriage returns (redraws of one line) into newlines
    done = subprocess.run(command, capture_output=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    return subprocess.CompletedProcess(done.args, 0, done.stdout.decode(), done.stderr.decode())


@pytest.mark.parametrize("n_seeds", ["1", "2"])
def test_a_default_run_prints_a_few_lines_and_one_bar_and_logs_every_epoch(cache, tmp_path, n_seeds):
    done = run_cli(cache, tmp_path / "run", "--seeds", n_seeds)
    lines = (done.stdout + done.stderr).strip().split("\n")  # the bar redraws itself with \r: one line
    assert len(lines) <= 12, lines  # the split, the bar, the summary: not a line per epoch
    assert not re.search(r"epoch \d+/40:", done.stderr)  # no bar per epoch (their description was "epoch N/40")
    assert "epoch=40/40" in done.stderr  # the run's one bar reached the last epoch
    log = runs.read_epoch_log(tmp_path / "run")
    assert [r["epoch"] for r in log] == list(range(1, 41))
    verbose = run_cli(cache, tmp_path / "verbose", "--seeds", n_seeds, "--verbose", "--quiet")
    assert len(re.findall(r"epoch (\d+)/40", verbose.stderr)) == 40


def test_a_default_sweep_prints_a_few_lines_and_no_bar_per_trial_epoch(cache, tmp_path):
    pytest.importorskip("optuna")
    command = [sys.executable, "-m", "cli", "sweep", str(cache), "--probe", "linear", "--out", str(tmp_path / "s"),
               "--trials", "4", "--parallel", "2", "--param", "lr=log:1e-3..1e-2", "--epochs", "20", "--batch-size",
               "4", "--no-plots"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    out, err = done.stdout.decode(), done.stderr.decode()
    assert len((out + err).strip().split("\n")) <= 25, out + err
    assert not re.search(r"epoch \d+/20 \(\d+ probes\)", err)  # the stacked trials draw no bar of their own
    assert "trials: 100%" in err  # the sweep's one bar
    assert [r["epoch"] for r in runs.read_epoch_log(tmp_path / "s" / "best-run")] == list(range(1, 21))
