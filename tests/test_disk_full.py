"""A full disk under extract, on a small tmpfs mounted here (as root; skipped where mounting is not allowed): the
command stops with one line (what it wrote, what it still needs, that re-running resumes), no traceback and no
crash, whether the disk is too small from the start or another process fills it midway; once space is freed the
same command completes and ``verify`` passes. Also the pieces: recognising the error, the reservation."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from step_cache.cache.disk_space import DiskFullError, is_disk_full, reserve
from step_cache.cache.manifest import read_manifest
from step_cache.synthetic.videos import write_class_folders

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
VIDEOS_PER_CLASS = 20
# 112 px: 1 + 7x7 tokens of 192 values per frame, 4 frames in float16: about 77 KB per clip
EXTRACT = ["extract", "--backbone", "vit-tiny", "--weights", "random", "--frames", "4", "--image-size", "112",
           "--workers", "1", "--shard-size-mb", "0.3", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("full-disk-videos")
    write_class_folders(root, {"left": -1, "right": 1}, videos_per_class=VIDEOS_PER_CLASS, num_frames=12)
    return root


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 3 MiB at tmp_path/disk (resized by the tests with ``resize``)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def resize(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True, capture_output=True)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=600)  # fmt: skip


def one_line_about_space(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "out of disk space (No space left on device); extraction stopped" in lines[0], lines[0]
    assert lines[0].endswith("free some space and re-run the same command to resume"), lines[0]
    return lines[0]


def completes_and_verifies(videos: Path, out: Path, command: list[str] = EXTRACT) -> None:
    result = cli(*command, "--videos", videos, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert cli("verify", out).returncode == 0
    assert read_manifest(out).num_videos == 2 * VIDEOS_PER_CLASS
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_extract_refuses_a_disk_without_room_for_the_estimate_before_writing_anything(videos, small_disk):
    resize(small_disk, "20m")
    out = small_disk / "cache"
    big = ["224" if arg == "112" else arg for arg in EXTRACT]  # 1 + 14x14 tokens: 16 MiB + a 17 MiB margin
    result = cli(*big, "--videos", videos, "--out", out)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{out}: not enough free space: the cache needs about " in lines[0], lines[0]
    assert "(40 clips x 297.0 KiB" in lines[0]
    assert lines[0].endswith("or pass --force (force=True) to extract what fits")
    assert not out.exists() and list(small_disk.iterdir()) == []  # nothing written, not even the lock
    dry = cli(*big, "--videos", videos, "--out", out, "--dry-run")
    assert dry.returncode == 0 and ["clips", "40"] in [line.split() for line in dry.stdout.splitlines()], dry.stdout
    assert "NOT enough: extract refuses without --force" in dry.stdout
    assert list(small_disk.iterdir()) == []
    resize(small_disk, "40m")
    completes_and_verifies(videos, out, big)


def test_a_disk_too_small_from_the_start_keeps_what_fits_with_force_and_the_rerun_completes(videos, small_disk):
    out = small_disk / "cache"
    result = cli(*EXTRACT, "--force", "--videos", videos, "--out", out)
    assert result.returncode == 1
    line = one_line_about_space(result.stderr)
    assert "MiB written and kept; about " in line and "MiB more needed" in line
    kept = read_manifest(out)
    assert 0 < kept.num_videos < 2 * VIDEOS_PER_CLASS  # the shards that fitted are listed and whole
    assert cli("verify", out).returncode == 0
    resize(small_disk, "40m")
    completes_and_verifies(videos, out)


def test_a_disk_that_fills_midway_stops_within_seconds_and_the_rerun_completes(videos, small_disk):
    resize(small_disk, "40m")
    out = small_disk / "cache"
    command = [sys.executable, "-m", "cli", *EXTRACT, "--videos", videos, "--out", out]
    process = subprocess.Popen(list(map(str, command)), stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while not (out / "shard-00001.h5").exists():  # midway: some shards published
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with open(small_disk / "filler", "wb") as filler:  # another program takes every free byte
        block = np.zeros(1 << 20, np.uint8).tobytes()
        try:
            while True:
                filler.write(block)
                filler.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    filled = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    stopped = time.monotonic() - filled
    assert process.returncode == 1 and stopped < 10, (process.returncode, stopped)
    one_line_about_space(stderr)
    assert cli("verify", out).returncode == 0  # what it kept is consistent
    (small_disk / "filler").unlink()
    completes_and_verifies(videos, out)


def test_compact_onto_a_full_disk_says_so_in_one_line_and_the_rerun_completes(videos, small_disk, tmp_path):
    source = tmp_path / "source"
    assert cli(*EXTRACT, "--videos", videos, "--out", source).returncode == 0
    out = small_disk / "compact"
    result = cli("compact", source, "--out", out, "--dtype", "float32", "--quiet")  # twice the bytes: 3 MiB is short
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "out of disk space (No space left on device); compaction stopped;" in lines[0], lines[0]
    assert lines[0].endswith("re-run the same command to resume")
    resize(small_disk, "40m")
    result = cli("compact", source, "--out", out, "--dtype", "float32", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert cli("verify", out).returncode == 0
    assert read_manifest(out).num_videos == 2 * VIDEOS_PER_CLASS


def test_disk_full_errors_are_recognised_however_they_arrive():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    hdf5 = RuntimeError("Can't decrement id ref count (file write failed: ..., errno = 28, error message = 'No space")
    assert is_disk_full(hdf5)
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("writing the manifest failed") from inner
    except ValueError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(ValueError("bad input"))


def test_a_reservation_that_does_not_fit_fails_cleanly_and_a_fitting_one_is_allocated(small_disk):
    path = small_disk / "file"
    path.write_bytes(b"x" * 10)
    with pytest.raises(DiskFullError):
        reserve(path, 100 << 20)
    assert path.stat().st_size == 10  # given back
    reserve(path, 1 << 20)
    assert path.stat().st_size == 1 << 20 and path.stat().st_blocks * 512 >= 1 << 20


def test_a_shard_written_into_reserved_space_is_trimmed_to_its_data(tmp_path):
    from step_cache.cache.manifest import TokenLayout
    from step_cache.cache.shard_file import ClipRecord, ShardWriter, read_shard_metadata

    layout = TokenLayout(cls_tokens=1, grid=(2, 2), dim=8)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = ShardWriter(tmp_path / "a", "shard-00000.h5", layout, 2)
    reserved = ShardWriter(tmp_path / "b", "shard-00000.h5", layout, 2, reserve_bytes=8 << 20)
    for writer in (plain, reserved):
        for i in range(3):
            writer.append(ClipRecord(np.full((2, 5, 8), i, np.float32), 0, f"v{i}", 0, "train", np.arange(2), 2, False))
        writer.finish()
    a, b = tmp_path / "a" / "shard-00000.h5", tmp_path / "b" / "shard-00000.h5"
    assert abs(b.stat().st_size - a.stat().st_size) < 4096 and b.stat().st_size < 1 << 20  # not 8 MiB
    with h5py.File(b) as handle:
        assert handle["tokens"][2].max() == 2
    assert list(read_shard_metadata(b)["video"]) == ["v0", "v1", "v2"]


@pytest.mark.parametrize("command", ["train-probe", "report"])
def test_a_write_without_a_file_name_on_a_full_disk_names_the_out_and_its_free_space(small_disk, tmp_path, command):
    # An ENOSPC from write() carries no file name: the line said ": out of disk space ..." with the free space of
    # the current directory's disk (tens of GiB), which told the user there was room.
    from step_cache.synthetic.tokens import write_token_cache
    from step_cache.training.trainer import train_probe

    write_token_cache(tmp_path / "cache", task="order", num_classes=2, videos_per_class=4, frames=4, dim=16)
    run = tmp_path / "run"
    train_probe([tmp_path / "cache"], "linear", run, epochs=1, batch_size=4, progress=False)
    # another program takes every free byte
    with open(small_disk / "filler", "wb") as filler, pytest.raises(OSError):
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
    out = small_disk / "out"
    args = ["train-probe", tmp_path / "cache", "--probe", "attentive", "--epochs", "1", "--quiet"]
    result = cli(*(args if command == "train-probe" else ["report", run]), "--out", out)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith(f"error: {out}: out of disk space (No space left on device); the command stopped; ")
    assert lines[0].endswith("; 0.0 MiB free: free some space and re-run the same command to resume"), lines[0]
