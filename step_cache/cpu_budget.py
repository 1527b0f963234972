"""How many CPUs this process may use, and sizing every thread pool from that number instead of the host's.

The host's core count (``os.cpu_count()``) is the wrong number wherever jobs share a machine: a container with a CPU
quota of 2 on a 64-core host, a job pinned to some cores, several sweep workers on one node. torch's thread pool
follows affinity but not a cgroup quota, and more threads than CPUs is the expensive case: OpenMP threads
spin-wait for each other in every small parallel region, so a thread whose core was taken away burns its peers'
time slices (docs/performance.md "Shared CPUs / contention").

The budget is the CPUs in this process's affinity mask, capped by the cgroup CPU quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; rounded up, at least 1). The thread count chosen is, first match
wins: ``--threads N``, ``OMP_NUM_THREADS``, the budget. Torch's intra-op and inter-op pools, extract's decode
workers and the streaming readers of training are sized from it, and a run records it in ``config.json``.

``limit_spin_wait`` must run before torch is imported (``cli.main`` does it): libgomp reads its wait policy once,
when it initialises.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from step_cache.errors import InputError
from step_cache.interface import option

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# OpenMP threads spin this many iterations before sleeping when a parallel region ends. libgomp's default is far
# longer than the gap between a probe's small regions, so a thread whose partner lost its core spins through its
# own time slice; fewer spins cost a little idle speed. The measurements behind the choice, idle and under load:
# docs/performance.md, "Shared CPUs / contention" (bench/contention.py).
SPIN_COUNT = 1_000
# The variables a user may set to choose the wait behaviour themselves; any one of them leaves ours unset.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a process uses and where it came from: ``--threads``, ``OMP_NUM_THREADS``, ``affinity``
    (the CPUs the process may run on) or ``cgroup quota`` (a container's CPU limit below that)."""

    count: int
    source: str

    def record(self) -> dict[str, int | str]:
        """What ``config.json`` says under ``"threads"``."""
        return {"count": self.count, "source": self.source}


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, dict[str, str]]:
    """From /proc/self/cgroup: the v2 path (``0::/path``) and the v1 path of each controller."""
    unified, v1 = None, {}
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            unified = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return unified, v1


def _ancestors(base: Path, path: str) -> list[Path]:
    """``base/path`` and every directory above it up to ``base``: a quota set on a parent limits its children."""
    parts = [part for part in path.split("/") if part]
    return [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_v2(text: str | None) -> float | None:
    fields = (text or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(quota: str | None, period: str | None) -> float | None:
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # -1: no quota


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota (in CPUs, e.g. 1.5) of this process's cgroup and its ancestors, v2 or v1; None when
    there is none or it cannot be read. ``root`` and ``proc_cgroup`` (the text of /proc/self/cgroup) are for tests."""
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    unified, v1 = _cgroup_paths(proc_cgroup)
    limits: list[float] = []
    if unified is not None:
        for directory in _ancestors(root, unified):
            limit = _quota_v2(_read(directory / "cpu.max"))
            if limit is not None:
                limits.append(limit)
    if "cpu" in v1:
        # v1 mounts the controller at cpu/, or at cpu,cpuacct/ with cpu/ a link to it; inside a container the
        # path in /proc/self/cgroup may name the host's hierarchy, so the mount root itself is checked too.
        for mount in (root / "cpu", root / "cpu,cpuacct"):
            for directory in _ancestors(mount, v1["cpu"]):
                limit = _quota_v1(_read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us"))
                if limit is not None:
                    limits.append(limit)
            if limits:
                break
    return min(limits) if limits else None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``taskset``, a batch system's binding); the core count where the
    platform has no affinity call."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def available_cpus(quota: float | None = None, affinity: int | None = None) -> ThreadChoice:
    """The CPUs this process may use: affinity capped by the cgroup quota (rounded up, at least 1). ``quota`` and
    ``affinity`` default to this process's own (tests pass them)."""
    affinity = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpu_limit() if quota is None else quota
    if quota is not None and math.ceil(quota) < affinity:
        return ThreadChoice(max(1, math.ceil(quota)), "cgroup quota")
    return ThreadChoice(affinity, "affinity")


def _omp_num_threads(environ: MutableMapping[str, str]) -> int | None:
    # OpenMP allows a list ("4,2": outer and nested levels); the first entry is the outer team's size.
    value = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose_threads(requested: int | None = None, environ: MutableMapping[str, str] | None = None) -> ThreadChoice:
    """``--threads`` (``requested``) > ``OMP_NUM_THREADS`` > the CPUs available (``available_cpus``)."""
    if requested is not None:
        if requested < 1:
            raise InputError(f"{option('threads')} must be >= 1, got {requested}")
        return ThreadChoice(requested, "--threads")
    from_env = _omp_num_threads(os.environ if environ is None else environ)
    if from_env is not None:
        return ThreadChoice(from_env, "OMP_NUM_THREADS")
    return available_cpus()


def limit_spin_wait(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Shorten OpenMP's spin-wait (before torch loads libgomp): ``GOMP_SPINCOUNT`` (GNU OpenMP, what torch's
    wheels use) and ``KMP_BLOCKTIME`` (Intel's, for builds with it). Left alone when the user set any of
    ``WAIT_VARIABLES``. Returns what was set."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in WAIT_VARIABLES):
        return {}
    # KMP_BLOCKTIME is in milliseconds: 0 would be passive; 1 ms spins about as long as SPIN_COUNT iterations.
    chosen = {"GOMP_SPINCOUNT": str(SPIN_COUNT), "KMP_BLOCKTIME": "1"}
    environ.update(chosen)
    return chosen


_applied: ThreadChoice | None = None


def apply_threads(requested: int | None = None) -> ThreadChoice:
    """Choose the thread count (``choose_threads``) and size torch's intra-op and inter-op pools from it. The
    inter-op pool can only be sized before its first use; a later call leaves it as it is."""
    global _applied
    import torch  # here, not at the top: limit_spin_wait must be able to run before torch is imported

    choice = choose_threads(requested)
    if choice.source == "--threads" and choice.count > (budget := available_cpus()).count:
        # More threads than CPUs only makes them wait on each other (30-40x slower measured with --threads 1000).
        log.warning("--threads %d is more than the %d CPU(s) this process may use (%s): using %d",
                    choice.count, budget.count, budget.source, budget.count)  # fmt: skip
        choice = ThreadChoice(budget.count, f"--threads {choice.count}, capped at the {budget.source}")
    torch.set_num_threads(choice.count)
    # The inter-op pool cannot be resized once started (a second call, or torch used it already): keep its size.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(choice.count)
    _applied = choice
    return choice


def recorded_threads() -> ThreadChoice:
    """What a run records in ``config.json``: the applied choice, or (a library caller that never called
    ``apply_threads``, e.g. after its own ``torch.set_num_threads``) torch's own thread count as it stands."""
    if _applied is not None:
        return _applied
    import torch

    return ThreadChoice(torch.get_num_threads(), "torch.get_num_threads")


def worker_count(cap: int, spare: int = 1) -> int:
    """Helper processes (decode workers, streaming readers) for the thread budget (the applied choice, else
    ``choose_threads``): one per thread after ``spare`` (left to the process that consumes their output), at
    least 1, at most ``cap``."""
    budget = _applied if _applied is not None else choose_threads()
    return max(1, min(cap, budget.count - spare))
