"""``step-cache sweep`` through the real CLI: a search from flags, a grid from a TOML file, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.synthetic.tokens import write_token_cache

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SHORT = ["--epochs", "2", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli-sweep") / "shards"
    write_token_cache(directory, task="static", num_classes=3, videos_per_class=8, dim=16, val_every=4)
    return directory


def run_cli(*args):
    command = [sys.executable, "-m", "cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)


def test_sweep_from_flags_and_grid_from_a_toml_file(shards, tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('[params]\nwd = [0.0, 0.1]\ndepth = [1, 2]\nlr = "3e-3"\n')
    flags = ["--param", "lr=log:1e-3..1e-2", "--param", "wd=0,0.1", "--param", "dropout=0", "--pruner", "hyperband"]
    searched = subprocess.Popen(
        [sys.executable, "-m", "cli", "sweep", shards, "--trials", "4", "--parallel", "2", *flags,
         "--out", tmp_path / "s", *SHORT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip
    grid = run_cli("sweep", "--features", shards, "--space", space, "--grid", "--out", tmp_path / "g", "--no-plots",
                   "--no-retrain", *SHORT)  # fmt: skip
    stdout, stderr = searched.communicate(timeout=300)
    assert searched.returncode == 0, stderr
    assert stdout.startswith("4 trials: ")
    assert re.search(r"best configuration \(trial #\d+ of sweep s\) retrained: step: val top-1", stdout), stdout
    with (tmp_path / "s" / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {"lr", "weight_decay"} <= set(rows[0]) and "dropout" not in rows[0]
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    assert best["fixed"] == {"dropout": 0.0} and best["config"]["probe_options"]["dropout"] == 0.0
    assert (tmp_path / "s" / "best-run" / "metrics.json").is_file()
    assert (tmp_path / "s" / "plots" / "parallel_coordinates.png").is_file()

    assert grid.returncode == 0, grid.stderr
    assert grid.stdout.startswith("4 trials: 4 complete")
    content = json.loads((tmp_path / "g" / "trials.json").read_text())
    assert sorted((t["params"]["weight_decay"], t["params"]["depth"]) for t in content["trials"]) == [
        (0.0, 1), (0.0, 2), (0.1, 1), (0.1, 2),
    ]  # fmt: skip
    assert content["space"]["lr"] == {"type": "fixed", "value": 3e-3}
    assert not (tmp_path / "g" / "plots").exists() and not (tmp_path / "g" / "best-run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "learning_rate=1e-3..1e-2"], "error: --param learning_rate=1e-3..1e-2: unknown parameter"),
        (["--param", "lr=1e-2..1e-3"], "error: --param lr=1e-2..1e-3: LOW must be below HIGH (got 0.01..0.001)"),
        (["--param", "lr=log:1e-3"], "a log range is written log:LOW..HIGH"),
        (["--probe", "mean", "--param", "lr=1e-3..1e-2"], "error: unknown probe 'mean'; choose one of: linear"),
        (["--param", "lr=1e-3"], "error: empty search space (only fixed values: lr)"),
        (["--param", "lr=1e-3..1e-2", "--grid"], "error: --grid needs a list of values for every parameter"),
        (["--param", "lr=1e-3,1e-2", "--sampler", "cmaes"], "error: unknown sampler 'cmaes'"),
        (["--param", "lr=1e-3,1e-2", "--metric", "pair_accuracy"], "needs mirrored class pairs"),
        (["--space", "nowhere.toml"], "error: nowhere.toml: search space file does not exist"),
    ],
)
def test_bad_input_is_one_line_error(shards, tmp_path, args, message):
    _register_commands()
    result = CliRunner().invoke(app, ["sweep", str(shards), "--out", str(tmp_path / "s"), *SHORT, *args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "s" / "trials.json").exists()


def test_missing_shards_is_an_error(tmp_path):
    _register_commands()
    result = CliRunner().invoke(app, ["sweep", "--param", "lr=1e-3,1e-2", "--quiet"])
    assert result.exit_code == 1 and "give the cache directory" in result.output


def test_without_optuna_the_sweep_command_names_the_extra_to_install(shards, tmp_path, monkeypatch):
    _register_commands()
    monkeypatch.setitem(sys.modules, "optuna", None)  # what `import optuna` meets when it is not installed
    result = CliRunner().invoke(app, ["sweep", str(shards), "--param", "lr=1e-3,1e-2", "--out", str(tmp_path), *SHORT])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "error: step-cache sweep needs optuna, which is not installed: pip install 'step-cache[sweep]'"
    ]


RESUMABLE = ["--param", "lr=log:1e-3..1e-2", "--param", "wd=0,0.1", "--parallel", "2", "--no-plots", *SHORT]


def test_the_same_command_resumes_the_sweep_and_a_finished_one_trains_nothing(shards, tmp_path):
    out = tmp_path / "s"
    first = run_cli("sweep", shards, "--out", out, "--trials", "2", *RESUMABLE)
    assert first.returncode == 0, first.stderr
    before = json.loads((out / "trials.json").read_text())
    assert before["finished"] == 2 and before["storage"] == "journal" and (out / "study.journal").is_file()

    more = run_cli("sweep", shards, "--out", out, "--trials", "4", *RESUMABLE)
    assert more.returncode == 0, more.stderr
    assert f"resuming {out}: 2 of 4 trials done, 2 left" in more.stderr
    after = json.loads((out / "trials.json").read_text())
    assert after["finished"] == 4 and sorted(t["number"] for t in after["trials"]) == [0, 1, 2, 3]
    kept = {t["number"]: (t["params"], t["value"]) for t in before["trials"]}
    assert {n: (t["params"], t["value"]) for t in after["trials"] if (n := t["number"]) in kept} == kept
    best_run = out / "best-run" / "metrics.json"
    retrained_at = best_run.stat().st_mtime_ns

    again = run_cli("sweep", shards, "--out", out, "--trials", "4", *RESUMABLE)
    assert again.returncode == 0, again.stderr
    assert f"{out}: the sweep is finished (4 of 4 trials done); nothing to train" in again.stderr
    assert "epoch" not in again.stderr and again.stdout.startswith("4 trials: ")
    assert json.loads((out / "trials.json").read_text())["trials"] == after["trials"]
    assert best_run.stat().st_mtime_ns == retrained_at  # the best configuration was not retrained again

    changed = run_cli("sweep", shards, "--out", out, "--trials", "4", *RESUMABLE[:-1], "--epochs", "3")
    assert changed.returncode == 1
    assert changed.stderr.strip() == (
        "error: study 'sweep' was started with other settings (config.epochs: 2 in the study, 3 here) "
        "(use the same options to resume it, or another --out)"
    )


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(shards, tmp_path):
    from step_cache.cache.locking import DirectoryLock

    out = tmp_path / "s"
    with DirectoryLock(out, writer="sweep"):
        held = run_cli("sweep", shards, "--out", out, "--trials", "2", *RESUMABLE)
    assert held.returncode == 1
    assert held.stderr.strip().splitlines() == [held.stderr.strip()]
    assert f"error: {out}: another sweep (pid {os.getpid()} on " in held.stderr
    assert not (out / "trials.json").exists()
    # A lock file left by a process that died (nobody holds its flock): taken over, the sweep runs.
    (out / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "since": "earlier"}))
    taken = run_cli("sweep", shards, "--out", out, "--trials", "2", *RESUMABLE)
    assert taken.returncode == 0, taken.stderr
    assert f"{out}: taking over from pid 999999, which stopped while sweeping" in taken.stderr
    assert not (out / ".lock").exists()


def test_results_of_another_study_in_out_are_never_replaced(shards, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    old = {"study": "no-name-1", "trials": [{"number": n, "state": "COMPLETE"} for n in range(3)]}
    (out / "trials.json").write_text(json.dumps(old))  # a sweep from before sweeps resumed: no journal
    refused = run_cli("sweep", shards, "--out", out, "--trials", "2", *RESUMABLE)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: {out / 'trials.json'}: holds 3 finished trials of another study ('no-name-1', not resumable: "
        "no study.journal); choose another --out"
    )
    assert json.loads((out / "trials.json").read_text()) == old
