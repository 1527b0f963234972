"""Integrity before use: a shard altered after extraction is refused by name; a copied cache costs one checksum."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import TINY

from step_cache.cache import integrity
from step_cache.cache.integrity import CHECKED_NAME, IntegrityError, check_shards
from step_cache.cache.manifest import read_manifest
from step_cache.cache.shards import ShardError, open_shards, shard_name
from step_cache.cache.verify import verify_cache
from step_cache.extraction.engine import extract
from step_cache.synthetic.tokens import write_token_cache

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def flip_token_byte(path, keep_times=False):
    """Change one byte inside the first clip's tokens, keeping the file's size (and, optionally, its times)."""
    stat = path.stat()
    with h5py.File(path, "r") as handle:
        offset = handle["tokens"].id.get_chunk_info(0).byte_offset + 5
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))
    if keep_times:  # what `touch -r` would do: only ctime still tells
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def cache(tmp_path, **overrides):
    directory = tmp_path / "cache"
    write_token_cache(directory, **{"videos_per_class": 6, "clips_per_shard": 4, **overrides})
    return directory


def test_published_shards_are_remembered_so_opening_checksums_nothing(tmp_path):
    directory = cache(tmp_path)
    manifest = read_manifest(directory)
    checked = json.loads((directory / CHECKED_NAME).read_text())["shards"]
    assert sorted(checked) == [r.file for r in manifest.shards] and len(checked) == 3
    assert {checked[r.file]["sha256"] for r in manifest.shards} == {r.sha256 for r in manifest.shards}
    assert check_shards(directory, manifest.shards) == 0
    assert len(open_shards(directory)) == 12


@pytest.mark.parametrize("keep_times", [False, True])
def test_an_altered_shard_is_refused_by_name(tmp_path, keep_times):
    directory = cache(tmp_path)
    flip_token_byte(directory / shard_name(1), keep_times=keep_times)
    with pytest.raises(IntegrityError, match=rf"{shard_name(1)}: its sha256 differs .* step-cache verify {directory}"):
        open_shards(directory)
    assert isinstance(IntegrityError("x"), ShardError)
    # the refusal is lasting (nothing remembered the bad shard), and verify agrees
    with pytest.raises(IntegrityError):
        open_shards(directory)
    assert not verify_cache(directory).ok


def test_a_truncated_or_missing_shard_is_refused_without_a_checksum(tmp_path, monkeypatch):
    directory = cache(tmp_path)
    path = directory / shard_name(2)
    path.write_bytes(path.read_bytes()[:-10])
    monkeypatch.setattr(integrity, "file_sha256", lambda _: pytest.fail("a size mismatch needs no checksum"))
    with pytest.raises(IntegrityError, match=rf"{shard_name(2)}: \d+ bytes, but the manifest says \d+"):
        open_shards(directory)
    path.unlink()
    with pytest.raises(IntegrityError, match=f"{shard_name(2)}: listed in the manifest but missing"):
        open_shards(directory)


def test_a_copied_cache_costs_one_checksum_pass_then_none(tmp_path):
    directory = cache(tmp_path)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(directory), str(copy)], check=True)  # new mtimes and ctimes, same bytes
    records = read_manifest(copy).shards
    assert check_shards(copy, records) == 3
    assert check_shards(copy, records) == 0
    np.testing.assert_array_equal(open_shards(copy).read_tokens([0, 5]), open_shards(directory).read_tokens([0, 5]))


def test_without_a_sidecar_or_a_writable_folder_it_still_reads(tmp_path, monkeypatch):
    directory = cache(tmp_path)
    (directory / CHECKED_NAME).unlink()

    def read_only(*_):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(integrity, "atomic_write_text", read_only)
    records = read_manifest(directory).shards
    assert check_shards(directory, records) == 3
    assert check_shards(directory, records) == 3  # nothing could be remembered: checked again, still readable
    assert len(open_shards(directory)) == 12


def test_verify_remembers_what_it_checked(tmp_path):
    directory = cache(tmp_path)
    (directory / CHECKED_NAME).unlink()
    assert verify_cache(directory).ok
    assert check_shards(directory, read_manifest(directory).shards) == 0


def test_inspect_reads_metadata_of_an_altered_cache(tmp_path):
    from step_cache.cache.summary import summarize_cache

    directory = cache(tmp_path)
    flip_token_byte(directory / shard_name(0))
    assert summarize_cache(directory)["clips"] == 12


def run_cli(*args):
    command = [sys.executable, "-m", "cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)


def test_cli_train_probe_refuses_an_altered_shard_and_trains_on_a_copy(_video_tree, tmp_path):
    out = tmp_path / "shards"
    extract(_video_tree, out, shard_size_mb=0.01, **TINY)  # several shards
    shards = [r.file for r in read_manifest(out).shards]
    assert len(shards) >= 2
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    flip_token_byte(out / shards[-1])
    train = ["--probe", "linear", "--epochs", "1", "--batch-size", "4", "--quiet"]
    refused = run_cli("train-probe", out, *train, "--out", tmp_path / "run-bad")
    assert refused.returncode == 1
    assert f"{out / shards[-1]}: its sha256 differs" in refused.stderr and "step-cache verify" in refused.stderr
    assert not (tmp_path / "run-bad" / "best.pt").exists()
    trained = run_cli("train-probe", copy, *train, "--out", tmp_path / "run-copy")
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "run-copy" / "best.pt").is_file()
    remembered = json.loads((copy / CHECKED_NAME).read_text())["shards"]
    assert sorted(remembered) == sorted(shards)
    shutil.rmtree(copy)
