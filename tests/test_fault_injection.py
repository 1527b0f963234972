"""Promises under faults: SIGKILL at random moments, write errors mid-shard, a second writer, stale locks."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import GOOD_VIDEOS, TINY

from step_cache import extract, open_shards
from step_cache.cache.locking import DirectoryLock, LockedError
from step_cache.cache.shards import ShardWriter
from step_cache.extraction.engine import ExtractionError

DRIVER = Path(__file__).with_name("fault_driver.py")


def add_copies(tree: Path, count: int) -> int:
    for i in range(count):
        source = tree / "slide_left" / f"slide_left_{i % 4}.mp4"
        (tree / "slide_left" / f"copy_{i}.mp4").write_bytes(source.read_bytes())
    return GOOD_VIDEOS + count


def good_keys(tree: Path) -> list[str]:
    from step_cache.catalog import discover_videos

    bad = {"slide_left/truncated.mp4", "slide_right/empty.mp4", "blink/notes.mp4"}
    return [item.key for item in discover_videos(tree) if item.key not in bad]


def run_driver(tree: Path, out: Path, rounds: int, seed: int, **extra: object) -> dict:
    config = {
        "videos": str(tree),
        "out": str(out),
        "good": good_keys(tree),
        "rounds": rounds,
        "seed": seed,
        "max_delay": 2.5,
        "options": {**TINY, "shard_size_mb": 0.001, **extra},
    }
    result = subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=DRIVER.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sigkill_at_random_moments_then_resume(video_tree, tmp_path):
    add_copies(video_tree, 12)
    outcome = run_driver(video_tree, tmp_path / "s", rounds=10, seed=0)
    assert len(outcome["states"]) == 10 and outcome["final"] == "complete"
    assert "partial" in outcome["states"], outcome  # some kills did land mid-run


def test_sigkill_with_augmented_views_loses_and_duplicates_nothing(video_tree, tmp_path):
    """Views of a video are written with its clean clips, so a kill never leaves a video with some of its views:
    verify (run after every kill) checks views 1..2 on every training video, and the resumed cache holds exactly
    the rows and drawn view parameters of an uninterrupted run."""
    add_copies(video_tree, 8)
    outcome = run_driver(video_tree, tmp_path / "s", rounds=6, seed=2, views=2, view_colour=0.2)
    assert outcome["final"] == "complete" and "partial" in outcome["states"], outcome


@pytest.mark.slow
def test_sigkill_many_times(video_tree, tmp_path):
    add_copies(video_tree, 30)
    outcome = run_driver(video_tree, tmp_path / "s", rounds=60, seed=1)
    assert outcome["final"] == "complete" and outcome["states"].count("partial") >= 10, outcome


def test_write_error_mid_shard_stops_cleanly_and_resumes(video_tree, tmp_path, monkeypatch):
    out = tmp_path / "s"
    original = ShardWriter._append_clip
    calls = {"n": 0}

    def failing_append(self, record):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, record)

    monkeypatch.setattr(ShardWriter, "_append_clip", failing_append)
    with pytest.raises(ExtractionError, match=r"No space left on device.*re-run the same command to resume"):
        extract(video_tree, out, **TINY, shard_size_mb=0.005)  # about two clips per shard
    assert not list(out.glob(".shard-*.tmp"))
    kept = open_shards(out)
    assert 0 < len(kept) < GOOD_VIDEOS
    monkeypatch.setattr(ShardWriter, "_append_clip", original)
    report = extract(video_tree, out, **TINY, shard_size_mb=0.005)
    assert report.skipped == len(kept)
    videos = list(open_shards(out).videos)
    assert len(videos) == len(set(videos)) == GOOD_VIDEOS


def test_second_writer_is_refused_while_first_runs(video_tree, tmp_path):
    out = tmp_path / "s"
    pattern = r"another extraction \(pid \d+ on .*wait for it"
    with DirectoryLock(out), pytest.raises(LockedError, match=pattern):  # a live process (this one) holds it
        extract(video_tree, out, **TINY)
    assert extract(video_tree, out, **TINY).videos == GOOD_VIDEOS  # free again once released


def test_stale_lock_of_dead_process_is_taken_over(video_tree, tmp_path, caplog):
    out = tmp_path / "s"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}))
    assert extract(video_tree, out, **TINY).videos == GOOD_VIDEOS
    assert "stale lock" in caplog.text and not (out / ".lock").exists()


def test_mixed_frame_sizes_in_one_run(tmp_path):
    from step_cache.synthetic.videos import moving_square, write_video

    for i, size in enumerate([(48, 64), (96, 64), (120, 160), (36, 36)]):
        write_video(tmp_path / "v" / "a" / f"{i}.mp4", moving_square(12, size, seed=i))
    report = extract(tmp_path / "v", tmp_path / "s", **TINY)
    assert report.videos == 4 and not report.failures
    assert open_shards(tmp_path / "s").read_tokens(range(4)).shape == (4, 4, 5, 192)


def test_directory_without_videos(tmp_path):
    from step_cache.catalog import CatalogError

    (tmp_path / "empty" / "class").mkdir(parents=True)
    with pytest.raises(CatalogError, match="no videos found"):
        extract(tmp_path / "empty", tmp_path / "s", **TINY)


def test_train_probe_killed_at_random_epochs_resumes_to_the_same_result(tmp_path):
    """SIGKILL a real train-probe process twice at random moments; --resume must end exactly like a straight run."""
    import random
    import signal
    import time

    from step_cache.synthetic.tokens import write_token_cache

    write_token_cache(tmp_path / "cache", task="order", num_classes=4, videos_per_class=10, frames=4, dim=16)
    base = [
        sys.executable,
        "-m",
        "cli",
        "train-probe",
        str(tmp_path / "cache"),
        "--probe",
        "step",
        "--epochs",
        "12",
        "--batch-size",
        "8",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run([*base, "--out", str(tmp_path / "straight")], capture_output=True, text=True, env=env)
    assert straight.returncode == 0, straight.stderr

    run = tmp_path / "killed"
    rng = random.Random(3)
    kills = 0
    for _ in range(2):
        args = [*base, "--out", str(run)] + (["--resume"] if (run / "config.json").exists() else [])
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        target = rng.randint(1, 10)  # kill once this many epochs are logged, plus a random fraction of one
        deadline = time.monotonic() + 120
        log = run / "metrics.jsonl"
        while process.poll() is None and time.monotonic() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= target:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1
    resumed = subprocess.run([*base, "--out", str(run), "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((run / "metrics.json").read_text())
    for key in ("top1", "pair_accuracy", "reversed_top1", "best_epoch", "confusion_matrix"):
        assert a[key] == b[key], key
    assert (tmp_path / "straight" / "metrics.jsonl").read_text().count("\n") == log.read_text().count("\n") == 12
    # The checkpoints and their recorded checksums agree after the kills: identical bytes, usable by evaluate.
    from step_cache.training.run_status import usable_checkpoint

    for name in ("best.pt", "last.pt"):
        assert (run / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
        usable_checkpoint(run, name)


def test_interrupt_between_two_clips_of_a_video_publishes_whole_videos_only(video_tree, tmp_path, monkeypatch):
    from collections import Counter

    from step_cache.cache.verify import verify_cache

    out = tmp_path / "s"
    original = ShardWriter._append_clip
    calls = {"n": 0}

    def interrupted(self, record):
        calls["n"] += 1
        if calls["n"] == 4:  # the second clip of the second video
            raise KeyboardInterrupt
        original(self, record)

    monkeypatch.setattr(ShardWriter, "_append_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(video_tree, out, **TINY, clips=2)
    kept = Counter(open_shards(out).videos)
    assert set(kept.values()) == {2} and len(kept) == 1  # the cut-short video was dropped, not half-published
    monkeypatch.setattr(ShardWriter, "_append_clip", original)
    extract(video_tree, out, **TINY, clips=2)
    assert set(Counter(open_shards(out).videos).values()) == {2} and verify_cache(out).ok


def test_foreign_shards_are_never_adopted(video_tree, tmp_path):
    from step_cache.cache.writer import ExtractionError as WriterError
    from step_cache.synthetic.tokens import write_token_cache

    out = tmp_path / "s"
    write_token_cache(out, task="order", num_classes=2, videos_per_class=2, frames=4, dim=16)
    (out / "manifest.json").unlink()  # e.g. an --overwrite interrupted half-way, or a hand-deleted manifest
    with pytest.raises(WriterError, match=r"shard-00000.h5: a shard made with other extraction settings"):
        extract(video_tree, out, **TINY)
    report = extract(video_tree, out, **TINY, overwrite=True)  # --overwrite removes the stray shard
    assert report.videos == GOOD_VIDEOS and open_shards(out).clip_shape == (4, 5, 192)


def test_an_overwrite_killed_midway_leaves_a_valid_cache(video_tree, tmp_path, monkeypatch):
    """--overwrite removes the old cache before writing the new one; killed after some shards are gone, the
    directory must still verify (a manifest listing no shard, the rest unlisted) and the next run must finish."""
    from step_cache.cache import writer
    from step_cache.cache.verify import verify_cache

    out = tmp_path / "s"
    extract(video_tree, out, **TINY, shard_size_mb=0.001)
    assert len(list(out.glob("shard-*.h5"))) > 2
    real_unlink, removed = Path.unlink, []

    def dying_unlink(self, *args, **kwargs):
        if self.name.startswith("shard-") and len(removed) == 2:
            raise KeyboardInterrupt  # the process dies here
        removed.append(self)
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", dying_unlink)
    with pytest.raises(KeyboardInterrupt):
        writer.remove_cache(out)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    report = verify_cache(out, checksums=True)
    assert report.ok, report.summary()
    assert any("not in the manifest" in warning for warning in report.warnings)
    extract(video_tree, out, **TINY, shard_size_mb=0.001)  # resumes: adopts the leftovers, extracts the rest
    with open_shards(out) as shards:
        assert sorted(set(shards.videos.tolist())) == sorted(good_keys(video_tree))
        assert len(shards.videos) == len(set(shards.videos.tolist()))
