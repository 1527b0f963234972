"""step-cache verify finds truncated, altered, missing and corrupted shards, and names them."""

import h5py
import numpy as np
from test_shards import write_cache
from typer.testing import CliRunner

from cli.main import _register_commands, app
from step_cache.cache.shards import shard_name
from step_cache.cache.verify import verify_cache

_register_commands()


def test_intact_cache_is_ok(tmp_path):
    write_cache(tmp_path)
    report = verify_cache(tmp_path)
    assert report.ok and report.shards == 2 and report.clips == 5, report.summary()
    result = CliRunner().invoke(app, ["verify", str(tmp_path), "--quiet"])
    assert result.exit_code == 0 and result.output.startswith("OK ")


def test_truncated_shard_is_named(tmp_path):
    write_cache(tmp_path)
    path = tmp_path / shard_name(1)
    path.write_bytes(path.read_bytes()[:-1000])
    report = verify_cache(tmp_path)
    assert not report.ok
    assert any(str(path) in p and "truncated" in p for p in report.problems), report.problems
    result = CliRunner().invoke(app, ["verify", str(tmp_path), "--quiet"])
    assert result.exit_code == 1 and shard_name(1) in result.output


def test_altered_values_are_caught_by_checksum_and_nan_check(tmp_path):
    write_cache(tmp_path)
    path = tmp_path / shard_name(0)
    with h5py.File(path, "r+") as handle:  # same size, different bytes, and a NaN
        handle["tokens"][1, 0, 0, 0] = np.nan
    report = verify_cache(tmp_path)
    joined = "\n".join(report.problems)
    assert "sha256 differs" in joined and "NaN/Inf in 1 clip(s), e.g. row 1 (v1.mp4)" in joined
    assert all(shard_name(0) in p for p in report.problems)


def test_missing_shard_and_leftovers(tmp_path):
    write_cache(tmp_path)
    (tmp_path / shard_name(0)).unlink()
    (tmp_path / ".shard-00007.h5.tmp").write_bytes(b"partial")
    report = verify_cache(tmp_path)
    assert report.problems == [f"{tmp_path / shard_name(0)}: missing"]
    assert any("unfinished shard" in w for w in report.warnings)


def test_duplicate_videos_are_reported(tmp_path):
    write_cache(tmp_path)
    with h5py.File(tmp_path / shard_name(1), "r+") as handle:
        handle["video"][0] = "v0.mp4"
    report = verify_cache(tmp_path, checksums=False)
    assert any("v0.mp4 clip 0 also in shard-00000.h5 (duplicate)" in p for p in report.problems), report.problems


def test_not_a_cache(tmp_path):
    report = verify_cache(tmp_path)
    assert not report.ok and "no manifest" in report.problems[0]


def test_partial_videos_and_foreign_shards_are_reported(tmp_path):
    import numpy as np
    from test_shards import LAYOUT, settings

    from step_cache.cache.manifest import Manifest, settings_hash, write_manifest
    from step_cache.cache.shards import ClipRecord, ShardWriter

    extraction = {**settings(), "sampling": {"frames": 4, "clips": 2}}
    manifest = Manifest(extraction=extraction, classes=["a"])
    writer = ShardWriter(tmp_path, shard_name(0), LAYOUT, 4, settings=settings_hash(extraction))
    tokens = np.zeros((4, LAYOUT.tokens_per_frame, LAYOUT.dim), np.float16)
    for video, clips in (("whole.mp4", 2), ("half.mp4", 1)):
        writer.append_video([ClipRecord(tokens, 0, video, k, "", np.arange(4), 8, False) for k in range(clips)])
    manifest.shards.append(writer.finish())
    write_manifest(tmp_path, manifest)
    problems = verify_cache(tmp_path).problems
    assert any("1 video(s) with other than 2 clip(s), e.g. half.mp4 (1)" in p for p in problems), problems

    other = tmp_path / "other"
    other.mkdir()
    write_cache(other)
    with h5py.File(other / shard_name(1), "r+") as handle:
        handle.attrs["settings_sha256"] = "0" * 64  # as if copied in from another cache
    problems = verify_cache(other, checksums=False).problems
    expected = f"{other / shard_name(1)}: written with other extraction settings than the manifest's"
    assert any(p.startswith(expected) for p in problems), problems
