"""Sweeps on a real PostgreSQL server: two workers share one study, one is killed with SIGKILL mid-trial and a
third joins; every trial ends with exactly one outcome and none is left RUNNING.

The server is started here (``initdb`` + ``pg_ctl`` into a temporary folder, listening on 127.0.0.1 only, on a
free port; as the ``postgres`` user when the tests run as root, because PostgreSQL refuses to run as root).
Skipped only where no PostgreSQL binaries exist."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from step_cache.synthetic.tokens import write_token_cache

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TRIALS = 12


def postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, else the newest /usr/lib/postgresql/*/bin (Debian/Ubuntu)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for folder in reversed(candidates):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *command]
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(map(str, command))]


def wait_until_accepting(url: str, limit: float = 60.0) -> None:
    """pg_ctl -w returns once the server answers; a first connection can still fail while it finishes starting
    (seen on a busy machine), so connect until one succeeds."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    deadline = time.monotonic() + limit
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(sqlalchemy.text("select 1"))
                return
            except sqlalchemy.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def postgres_url():
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
    root = Path(tempfile.mkdtemp(prefix="step-cache-pg-"))  # not pytest's tmp_path: 0700 and owned by root
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    subprocess.run(
        as_server_user([binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]),
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    for _ in range(5):  # another process may take the free port between our probe and the server's bind
        port = free_port()
        options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50"
        started = subprocess.run(
            as_server_user([binaries / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "120", "start"]),
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if started.returncode == 0:
            break
    else:
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log.read_text()[-2000:]}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    try:
        wait_until_accepting(url)
        yield url
    finally:
        subprocess.run(as_server_user([binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"]),
                       capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def worker(shards: Path, url: str, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "cli", "sweep", shards, "--trials", TRIALS, "--parallel", "2", "--param",
               "lr=log:1e-3..3e-2", "--param", "wd=0,0.05,0.1", "--pruner", "none", "--epochs", "6",
               "--batch-size", "8", "--storage", url, "--study-name", "pg", "--heartbeat", "1", "--out", out,
               "--no-retrain", "--no-plots", "--quiet"]  # fmt: skip
    log = out.with_suffix(".log").open("w")
    return subprocess.Popen(list(map(str, command)), stdout=log, stderr=subprocess.STDOUT, env=ENV)


def test_a_killed_worker_s_trial_is_requeued_and_every_trial_finishes_once(postgres_url, tmp_path):
    import optuna

    from step_cache.sweeps.storage import has_outcome

    shards = tmp_path / "shards"
    write_token_cache(shards, task="static", num_classes=3, videos_per_class=16, dim=32, val_every=4)
    first = worker(shards, postgres_url, tmp_path / "a")
    second = worker(shards, postgres_url, tmp_path / "b")
    victim = f":{first.pid}"

    # Kill the first worker while it trains: one of its trials RUNNING with an epoch reported.
    deadline = time.monotonic() + 600
    study = None
    while True:
        assert first.poll() is None, "the first worker finished before it could be killed mid-trial"
        assert time.monotonic() < deadline, "the first worker never reported an epoch"
        try:
            study = study or optuna.load_study(study_name="pg", storage=postgres_url)
            running = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                       if str(t.user_attrs.get("worker", "")).endswith(victim) and t.intermediate_values]  # fmt: skip
        except KeyError:  # the study does not exist yet
            running = []
        if running:
            break
        time.sleep(0.02)
    first.kill()
    first.wait()
    killed = {t.number for t in running}
    third = worker(shards, postgres_url, tmp_path / "c")
    for process, name in ((second, "b"), (third, "c")):
        assert process.wait(timeout=900) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]

    trials = optuna.load_study(study_name="pg", storage=postgres_url).get_trials()
    outcome = [t for t in trials if has_outcome(t)]
    assert len(outcome) == TRIALS and all(t.state.name == "COMPLETE" for t in outcome)
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    # The killed trial failed without an outcome and a copy with its parameters ran once in its place.
    by_number = {t.number: t for t in trials}
    for number in killed:
        assert by_number[number].state.name == "FAIL" and not has_outcome(by_number[number])
        copies = [t for t in outcome if number in t.system_attrs.get("retry_history", [])]
        assert len(copies) == 1 and copies[0].params == by_number[number].params
    origins = [t.system_attrs.get("failed_trial", t.number) for t in outcome]
    assert len(origins) == len(set(origins))  # no trial finished twice
    configurations = {tuple(sorted(t.params.items())) for t in outcome}  # nor a configuration, across workers
    assert len(configurations) == TRIALS, [t.params for t in outcome]
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in outcome} >= {str(second.pid)}
