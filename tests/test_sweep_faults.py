"""Sweeps under SIGKILL: the real ``step-cache sweep`` command killed at random moments and re-run, on the
default journal storage and on SQLite (tests/sweep_fault_driver.py does the killing and checks every promise:
exactly ``--trials`` trials with an outcome in the end, none lost or run twice, no configuration repeated,
trials.json never shrinks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("sweep_fault_driver.py")


def run_driver(work: Path, storage: str, kills: int, seed: int, trials: int = 8) -> dict:
    config = {"work": str(work), "storage": storage, "kills": kills, "seed": seed, "trials": trials}
    result = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(config)], capture_output=True, text=True, timeout=3000,
        cwd=DRIVER.parents[1],
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_five_kills_then_the_same_command_finishes_every_trial_once_with_distinct_configurations(storage, tmp_path):
    outcome = run_driver(tmp_path, storage, kills=5, seed=0)
    assert outcome["kills"] == 5 and outcome["storage"] == storage


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_ten_kills_then_the_same_command_finishes_every_trial_once(storage, tmp_path):
    outcome = run_driver(tmp_path, storage, kills=10, seed=1)
    assert outcome["kills"] == 10
    assert any(running for _, running in outcome["progress"]), outcome  # some kills did land mid-trial
