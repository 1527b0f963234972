"""Fault-injection driver: SIGKILL an extraction at random moments, resume, and check the cache after each kill.

Run as a script by tests/test_fault_injection.py. This process imports the library once and forks a child per
round (fast), but never runs torch itself, so forking is safe. Prints one JSON line with what happened.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path


def rows(out: Path) -> dict[tuple[str, int, int], str]:
    """(video, clip, view) -> view_params of every row of the cache; AssertionError when a row appears twice."""
    from step_cache.cache.shards import open_shards

    with open_shards(out) as shards:
        keys = list(zip(shards.videos.tolist(), shards.clip_index.tolist(), shards.views.tolist(), strict=True))
        table = dict(zip(keys, shards.view_params.tolist(), strict=True))
    assert len(table) == len(keys), "a clip (or a view of one) appears twice"
    return table


def check(out: Path, good: set[str]) -> str:
    """'empty' (no manifest yet), 'partial' or 'complete'; raises AssertionError when a promise is broken (verify
    also checks that every video in the cache has all its augmented views, when the cache has views)."""
    from step_cache.cache.manifest import read_manifest
    from step_cache.cache.verify import verify_cache

    if not (out / "manifest.json").exists():
        return "empty"
    manifest = read_manifest(out)  # atomic replace: always parseable
    report = verify_cache(out, checksums=True)
    assert report.ok, report.summary()
    if not manifest.shards:
        return "partial"
    videos = {video for video, _, _ in rows(out)}
    assert set(videos) <= good, f"unexpected videos {set(videos) - good}"
    return "complete" if set(videos) == good else "partial"


def run_child(videos: Path, out: Path, options: dict, overwrite: bool) -> int:
    pid = os.fork()
    if pid == 0:  # child: one extraction run, then leave without running the parent's cleanup
        code = 1
        try:
            from step_cache.extraction.engine import extract

            extract(videos, out, **options, overwrite=overwrite)
            code = 0
        finally:
            os._exit(code)
    return pid


def started_writing(out: Path, pid: int, limit: float) -> bool:
    """Wait until the child ``pid`` holds the cache's lock (it is about to remove or write shards); False when it
    finished first. Killing only from then on makes the kills land in the writing part of a run, not in its start-up
    (imports, model loading), which would leave the previous cache untouched every time."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if json.loads((out / ".lock").read_text()).get("pid") == pid:
                return True
        except (OSError, ValueError):
            pass  # not there yet, or being written
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return False  # done already (left unreaped for the caller's waitpid)
        time.sleep(0.002)
    return False


def main() -> None:
    config = json.loads(sys.argv[1])
    videos, out = Path(config["videos"]), Path(config["out"])
    good, options = set(config["good"]), config["options"]
    rng = random.Random(config["seed"])
    # Import once, before forking (imports start no torch threads, so forking stays safe).
    import timm  # noqa: F401

    import step_cache.extraction.engine  # noqa: F401

    # Calibrate: how long does one whole run take here, from taking the lock? Kills are spread over that time.
    pid = run_child(videos, out, options, True)
    started_writing(out, pid, limit=120.0)
    started = time.monotonic()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the calibration run failed"
    duration = time.monotonic() - started
    reference = rows(out)  # an uninterrupted run: a resumed one must hold the same rows and the same views

    states, overwrite = [], True
    for _ in range(config["rounds"]):
        pid = run_child(videos, out, options, overwrite)
        if started_writing(out, pid, limit=120.0):
            time.sleep(rng.uniform(0.0, duration))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        state = check(out, good)
        states.append(state)
        overwrite = state == "complete"  # start over so that later kills still land mid-run
    pid = run_child(videos, out, options, False)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the final resume failed"
    final = check(out, good)
    assert final == "complete", final
    assert rows(out) == reference, "the resumed cache's rows or views differ from an uninterrupted run's"
    print(json.dumps({"states": states, "final": final, "run_seconds": round(duration, 2)}))


if __name__ == "__main__":
    main()
