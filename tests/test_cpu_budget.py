"""The CPU budget: affinity capped by the cgroup CPU quota (v2 and v1), --threads > OMP_NUM_THREADS > budget, the
spin-wait limit set before torch loads, and the choice recorded in a run's config.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from step_cache.cpu_budget import (
    ThreadChoice,
    available_cpus,
    cgroup_cpu_limit,
    choose_threads,
    limit_spin_wait,
)
from step_cache.synthetic.tokens import write_token_cache

ROOT = Path(__file__).resolve().parents[1]
WAIT = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_of_the_cgroup_and_its_parents(tmp_path):
    write(tmp_path / "cpu.max", "max 100000\n")  # the root: no limit
    write(tmp_path / "jobs" / "cpu.max", "250000 100000\n")  # 2.5 CPUs for every job
    write(tmp_path / "jobs" / "one" / "cpu.max", "400000 100000\n")  # looser than its parent: the parent's counts
    assert cgroup_cpu_limit(tmp_path, "0::/jobs/one\n") == pytest.approx(2.5)
    write(tmp_path / "jobs" / "one" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/jobs/one\n") == pytest.approx(1.5)
    assert cgroup_cpu_limit(tmp_path, "0::/\n") is None  # "max": unlimited
    assert cgroup_cpu_limit(tmp_path / "missing", "0::/jobs/one\n") is None  # nothing readable: no limit


def test_cgroup_v1_quota_from_cfs_files(tmp_path):
    proc = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n"
    write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "50000\n")
    write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) == pytest.approx(0.5)
    write(tmp_path / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")  # -1: no quota
    assert cgroup_cpu_limit(tmp_path, proc) is None


def test_budget_is_affinity_capped_by_the_quota_rounded_up():
    assert available_cpus(quota=1.5, affinity=8) == ThreadChoice(2, "cgroup quota")
    assert available_cpus(quota=0.2, affinity=8) == ThreadChoice(1, "cgroup quota")  # at least one
    assert available_cpus(quota=16.0, affinity=4) == ThreadChoice(4, "affinity")  # the quota is no limit here
    assert available_cpus(quota=None, affinity=3) == ThreadChoice(3, "affinity")
    own = available_cpus()
    assert 1 <= own.count <= len(os.sched_getaffinity(0))


def test_threads_option_beats_omp_num_threads_which_beats_the_budget():
    assert choose_threads(3, {"OMP_NUM_THREADS": "1"}) == ThreadChoice(3, "--threads")
    assert choose_threads(None, {"OMP_NUM_THREADS": "4,2"}) == ThreadChoice(4, "OMP_NUM_THREADS")  # outer level
    assert choose_threads(None, {"OMP_NUM_THREADS": "lots"}) == available_cpus()  # unusable: ignored
    assert choose_threads(None, {}) == available_cpus()
    with pytest.raises(ValueError, match=r"^threads= must be >= 1, got 0$"):
        choose_threads(0, {})


def test_spin_wait_is_limited_unless_the_user_chose_a_wait_policy():
    environ: dict[str, str] = {}
    assert limit_spin_wait(environ) == environ == {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "1"}
    for name in WAIT:
        own = {name: "PASSIVE" if name == "OMP_WAIT_POLICY" else "5"}
        assert limit_spin_wait(dict(own)) == {}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*WAIT, "OMP_NUM_THREADS")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def test_the_cli_limits_spin_wait_before_torch_is_imported_and_applies_the_thread_count():
    """libgomp reads GOMP_SPINCOUNT once, when torch loads it: cli.main must set it before anything imports torch."""
    code = (
        "import os, sys\n"
        "import cli.main\n"
        "print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT'))\n"
        "from step_cache.cpu_budget import apply_threads, recorded_threads\n"
        "choice = apply_threads(1)\n"
        "import torch\n"
        "print(torch.get_num_threads(), torch.get_num_interop_threads(), recorded_threads().record())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["False 1000", "1 1 {'count': 1, 'source': '--threads'}"]
    mine = subprocess.run(
        [sys.executable, "-c", "import os, cli.main; print(os.environ.get('GOMP_SPINCOUNT'))"],
        capture_output=True, text=True, env=clean_env(OMP_WAIT_POLICY="ACTIVE"), timeout=120,
    )  # fmt: skip
    assert mine.stdout.strip() == "None"  # the user's wait policy stands


def test_train_probe_records_the_thread_choice_in_config_json(tmp_path):
    write_token_cache(tmp_path / "cache", videos_per_class=4, dim=16)
    base = [sys.executable, "-m", "cli", "train-probe", str(tmp_path / "cache"), "--probe", "linear", "--epochs",
            "1", "--quiet"]  # fmt: skip
    for extra, env, expected in (
        (["--threads", "1"], clean_env(OMP_NUM_THREADS="2"), {"count": 1, "source": "--threads"}),
        ([], clean_env(OMP_NUM_THREADS="1"), {"count": 1, "source": "OMP_NUM_THREADS"}),
    ):
        out = tmp_path / f"run-{expected['source'].strip('-')}"
        done = subprocess.run([*base, "--out", str(out), *extra], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads((out / "config.json").read_text())["threads"] == expected
