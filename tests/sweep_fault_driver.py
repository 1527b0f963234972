"""Fault-injection driver for sweeps: SIGKILL the real ``step-cache sweep`` command at random moments, re-run the
same command, and check the study and OUT's files after every kill.

Run as a script by tests/test_sweep_faults.py with one JSON argument: {"work", "storage" ("journal" or "sqlite"),
"kills", "seed", "trials"}. Prints one JSON line with what happened; an AssertionError names a broken promise:

- ``trials.json`` never holds fewer finished trials than before a kill (and always parses: atomic writes);
- the study never has more than ``trials`` trials with an outcome, and no configuration has two (a re-queued
  trial's original has none, and a restarted process does not ask the values of the first one again);
- the last re-run ends with exactly ``trials`` trials with an outcome, none RUNNING, and a further re-run says the
  sweep is finished, exits 0 and adds no trial.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def command(shards: Path, out: Path, storage: str, trials: int) -> list[str]:
    args = [sys.executable, "-m", "cli", "sweep", str(shards), "--out", str(out), "--trials", str(trials)]
    args += ["--parallel", "2", "--param", "lr=log:1e-3..3e-2", "--param", "wd=0,0.05,0.1", "--epochs", "3"]
    args += ["--batch-size", "8", "--quiet", "--no-plots"]
    if storage == "sqlite":
        args += ["--storage", f"sqlite:///{out.parent / (out.name + '.db')}", "--study-name", "s", "--heartbeat", "1"]
    return args


def load(out: Path, storage: str):  # -> optuna.Study | None (optuna imported late: the parent stays light)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage == "sqlite":
        try:  # a kill before the study was created leaves no database or no study in it
            return optuna.load_study(study_name="s", storage=f"sqlite:///{out.parent / (out.name + '.db')}")
        except KeyError:
            return None
    from step_cache.sweeps.storage import _journal

    if not (out / "study.journal").exists():
        return None
    return optuna.load_study(study_name="sweep", storage=_journal(out / "study.journal"))


def finished_in_files(out: Path) -> int:
    path = out / "trials.json"
    if not path.exists():
        return 0
    content = json.loads(path.read_text())  # must always parse: written atomically
    return int(content["finished"])


def check(out: Path, storage: str, trials: int) -> tuple[int, int]:
    """(trials with an outcome, RUNNING trials) in the study; asserts that no configuration counts twice."""
    from step_cache.sweeps.storage import has_outcome

    study = load(out, storage)
    if study is None:
        return 0, 0
    all_trials = study.get_trials(deepcopy=False)
    outcome = [t for t in all_trials if has_outcome(t)]
    assert len(outcome) <= trials, f"{len(outcome)} trials with an outcome, budget {trials}"
    numbers = {t.number for t in outcome}
    for trial in outcome:  # a re-queued trial and its original never both count
        history = trial.system_attrs.get("retry_history", [])
        assert not numbers & set(history), f"trial {trial.number} and its original {history} both have an outcome"
    origins = [t.system_attrs.get("failed_trial", t.number) for t in outcome]
    assert len(origins) == len(set(origins)), f"a configuration has two outcomes: {sorted(origins)}"
    configurations = [tuple(sorted(t.params.items())) for t in outcome]  # restarts draw new values, not the same
    assert len(configurations) == len(set(configurations)), f"configurations repeated: {sorted(configurations)}"
    running = sum(t.state.name == "RUNNING" for t in all_trials)
    return len(outcome), running


def holds_lock(out: Path, pid: int) -> bool:
    try:
        return json.loads((out / ".lock").read_text()).get("pid") == pid
    except (OSError, ValueError):
        return False


def start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("a") as handle:
        return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=Path(__file__).parents[1])


def wait_for_lock(process: subprocess.Popen, out: Path, limit: float = 300.0) -> bool:
    """Until the process holds OUT's lock (its imports are done; it is about to open the study): kills from then
    on land in the sweep, not in Python's start-up. False when it exited first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if holds_lock(out, process.pid):
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError(f"the sweep did not take {out}/.lock within {limit} s")


def main() -> None:
    config = json.loads(sys.argv[1])
    work, storage, trials = Path(config["work"]), config["storage"], int(config["trials"])
    rng = random.Random(config["seed"])
    from step_cache.synthetic.tokens import write_token_cache

    shards = work / "shards"
    if not shards.exists():
        write_token_cache(shards, task="static", num_classes=3, videos_per_class=6, dim=16, val_every=3)
    log = work / f"{storage}.log"

    # Calibrate: an uninterrupted sweep, from taking its lock to writing its last trial; kills are spread over
    # that time and a little more (the best configuration's retrain follows).
    calibration = work / f"{storage}-calibration"
    process = start(command(shards, calibration, storage, trials), log)
    wait_for_lock(process, calibration)
    began = time.monotonic()
    while finished_in_files(calibration) < trials and process.poll() is None:
        time.sleep(0.01)
    duration = 1.15 * (time.monotonic() - began)
    assert process.wait(timeout=600) == 0, f"the calibration run failed; see {log}"
    assert check(calibration, storage, trials) == (trials, 0)

    outs, delivered, progress = [work / f"{storage}-0"], 0, []
    out, before = outs[0], 0
    while delivered < config["kills"]:
        process = start(command(shards, out, storage, trials), log)
        if wait_for_lock(process, out):
            time.sleep(rng.uniform(0.0, duration))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            delivered += 1
        else:
            assert process.returncode == 0, f"a run failed (exit {process.returncode}); see {log}"
        files = finished_in_files(out)
        assert files >= before, f"{out}/trials.json went from {before} to {files} finished trials"
        done, running = check(out, storage, trials)
        assert files <= done, f"trials.json lists {files} finished trials, the study has {done}"
        progress.append([done, running])  # RUNNING trials at a kill: it landed mid-trial
        before = files
        if done == trials and running == 0:  # its trials are done: later kills land mid-trial only in a new sweep
            out, before = work / f"{storage}-{len(outs)}", 0
            outs.append(out)
    for out in outs:  # the same command once more: each sweep finishes its trials
        result = subprocess.run(command(shards, out, storage, trials), capture_output=True, text=True, env=ENV,
                                timeout=900, cwd=Path(__file__).parents[1])  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert check(out, storage, trials) == (trials, 0), f"{out}: {check(out, storage, trials)}"
        assert finished_in_files(out) == trials
        study = load(out, storage)
        count = len(study.get_trials(deepcopy=False))
        again = subprocess.run(command(shards, out, storage, trials), capture_output=True, text=True, env=ENV,
                               timeout=900, cwd=Path(__file__).parents[1])  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"the sweep is finished ({trials} of {trials} trials done); nothing to train" in again.stderr
        assert len(load(out, storage).get_trials(deepcopy=False)) == count, "a finished sweep's re-run added trials"
    print(json.dumps({"storage": storage, "kills": delivered, "sweeps": len(outs), "progress": progress,
                      "run_seconds": round(duration, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
