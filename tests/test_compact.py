"""``compact``: a cache rewritten as int8 and/or with pooled patches, without the backbone; crash-safe, resumable."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_CLI
from test_integrity import flip_token_byte

from step_cache.cache import compact as compact_module
from step_cache.cache.compact import CompactionError, compact, pool_grid
from step_cache.cache.files import file_sha256
from step_cache.cache.integrity import IntegrityError
from step_cache.cache.manifest import read_manifest
from step_cache.cache.quantize import quantize
from step_cache.cache.shards import open_shards
from step_cache.cache.verify import verify_cache
from step_cache.extraction.engine import extract
from step_cache.synthetic.tokens import write_token_cache

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def src(tmp_path):
    directory = tmp_path / "src"
    # 2 clips per video, grid 3x3 (an odd grid: pooling by 2 leaves partial windows), shards of 5 clips
    write_token_cache(directory, videos_per_class=5, clips_per_video=2, grid=(3, 3), dim=8, clips_per_shard=5)
    return directory


def test_int8_compaction_keeps_everything_but_the_precision(src, tmp_path):
    before = {p.name: file_sha256(p) for p in src.glob("shard-*.h5")}
    report = compact(src, tmp_path / "out", dtype="int8", progress=False)
    assert {p.name: file_sha256(p) for p in src.glob("shard-*.h5")} == before  # the source is only read
    assert report.videos == 10 and report.clips == 20 and report.skipped == 0
    assert "0." in report.summary() and "int8 tokens" in report.summary()
    a, b = open_shards(src), open_shards(tmp_path / "out")
    for name in ("labels", "videos", "clip_index", "splits", "frame_indices", "num_frames", "short"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    values, scales = b.read_stored(range(len(b)))
    expected_values, expected_scales = quantize(a.read_tokens(range(len(a))))
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(scales, expected_scales)
    differences = {k for k in a.manifest.extraction if a.manifest.extraction[k] != b.manifest.extraction[k]}
    assert differences == {"tokens"} and b.manifest.extraction["tokens"]["dtype"] == "int8"
    assert b.manifest.classes == a.manifest.classes and b.manifest.pairs == a.manifest.pairs
    assert b.manifest.source["compacted_from"] == str(src.resolve())
    assert b.tokens_nbytes / a.tokens_nbytes == (8 + 2) / 16
    assert verify_cache(tmp_path / "out").ok


def test_pooling_matches_the_extractors_average_pool(src, tmp_path):
    tokens = np.random.default_rng(0).standard_normal((2, 4, 1 + 3 * 3, 8)).astype(np.float32)
    pooled = pool_grid(tokens, 1, (3, 3), 2)
    grid = torch.from_numpy(tokens[:, :, 1:]).reshape(8, 3, 3, 8).permute(0, 3, 1, 2)
    reference = torch.nn.functional.avg_pool2d(grid, 2, 2, ceil_mode=True).flatten(2).transpose(1, 2)
    np.testing.assert_allclose(pooled[:, :, 1:].reshape(8, 4, 8), reference.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(pooled[:, :, :1], tokens[:, :, :1])  # CLS kept
    compact(src, tmp_path / "pooled", pool_patches=2, progress=False)
    a, b = open_shards(src), open_shards(tmp_path / "pooled")
    assert b.clip_shape == (4, 1 + 2 * 2, 8) and b.layout.patch_pool == 2 and b.layout.dtype == "float16"
    expected = pool_grid(a.read_tokens([3]), 1, (3, 3), 2).astype(np.float16)
    np.testing.assert_array_equal(b.read_tokens([3]), expected)
    assert b.manifest.extraction["tokens"]["pooled_after_storage"] == {"patch_pool": 1, "dtype": "float16"}
    assert verify_cache(tmp_path / "pooled").ok


def test_refuses_to_write_into_its_source_or_to_read_an_altered_one(src, tmp_path):
    for out in (src, src / "."):
        with pytest.raises(CompactionError, match="never overwrites its source"):
            compact(src, out, dtype="int8", overwrite=True, progress=False)
    assert verify_cache(src).ok
    with pytest.raises(ValueError, match="token dtype must be one of"):
        compact(src, tmp_path / "x", dtype="int4", progress=False)
    flip_token_byte(src / "shard-00001.h5")
    with pytest.raises(IntegrityError, match=r"shard-00001\.h5: its sha256 differs"):
        compact(src, tmp_path / "out", dtype="int8", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_interrupted_compaction_resumes_to_the_same_cache(src, tmp_path, monkeypatch):
    compact(src, tmp_path / "straight", dtype="int8", shard_size_mb=0.002, progress=False)
    calls = {"n": 0}
    original = compact_module.CacheWriter.append_video

    def interrupted(self, records):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        original(self, records)

    monkeypatch.setattr(compact_module.CacheWriter, "append_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compact(src, tmp_path / "resumed", dtype="int8", shard_size_mb=0.002, progress=False)
    partial = read_manifest(tmp_path / "resumed")
    assert partial.num_videos == 5 and not partial.source["finished"]
    monkeypatch.setattr(compact_module.CacheWriter, "append_video", original)
    report = compact(src, tmp_path / "resumed", dtype="int8", shard_size_mb=0.002, progress=False)
    assert report.skipped == 5 and report.videos == 5
    straight, resumed = open_shards(tmp_path / "straight"), open_shards(tmp_path / "resumed")
    order = np.lexsort((resumed.clip_index, resumed.videos))
    reference = np.lexsort((straight.clip_index, straight.videos))
    np.testing.assert_array_equal(resumed.videos[order], straight.videos[reference])
    np.testing.assert_array_equal(resumed.read_tokens(order), straight.read_tokens(reference))
    assert read_manifest(tmp_path / "resumed").source["finished"] and verify_cache(tmp_path / "resumed").ok
    # another dtype into the same --out is refused, naming the difference
    with pytest.raises(Exception, match=r"tokens\.dtype: 'int8' != 'float16'"):
        compact(src, tmp_path / "resumed", dtype="float16", progress=False)


def run_cli(*args):
    command = [sys.executable, "-m", "cli", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 0, f"{args[0]}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def test_cli_compact_to_int8_then_every_reader(_video_tree, tmp_path):
    shards, small = tmp_path / "shards", tmp_path / "shards8"
    extract(_video_tree, shards, **TINY)
    shown = run_cli("compact", shards, "--out", small, "--dtype", "int8", "--quiet").stdout
    assert f"{small}: compacted 9 videos (9 clips)" in shown
    a, b = open_shards(shards), open_shards(small)
    assert b.tokens_nbytes <= 0.55 * a.tokens_nbytes
    assert "OK " in run_cli("verify", small, "--quiet").stdout
    assert json.loads(run_cli("inspect", small, "--json").stdout)["tokens"]["dtype"] == "int8"
    train = ["--epochs", "2", "--batch-size", "4", "--quiet"]
    run_cli("train-probe", small, "--probe", "step", "--depth", "1", "--no-mlp", "--out", tmp_path / "run", *train)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["top1"] <= 1.0
    run_cli("evaluate", "--run", tmp_path / "run", "--features", small, "--out", tmp_path / "eval")
    run_cli("predict", "--run", tmp_path / "run", "--features", small, "--out", tmp_path / "predictions.csv")
    assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 1 + 9
    grid = ["--param", "lr=1e-3,1e-2", "--grid", "--no-plots", "--no-retrain"]
    run_cli("sweep", small, "--probe", "linear", *grid, "--out", tmp_path / "sweep", *train)
    assert (tmp_path / "sweep" / "best.json").is_file()
    # extract --dtype int8 writes the same cache directly
    direct = tmp_path / "direct8"
    run_cli("extract", "--videos", _video_tree, "--out", direct, "--dtype", "int8", "--workers", "0", *TINY_CLI)
    c = open_shards(direct)
    assert c.manifest.extraction == b.manifest.extraction and list(c.videos) == list(b.videos)
    for got, want in zip(c.read_stored(range(len(c))), b.read_stored(range(len(b))), strict=True):
        np.testing.assert_array_equal(got, want)


def test_projection_on_principal_directions_of_training_clips(tmp_path):
    src = tmp_path / "src"
    write_token_cache(src, videos_per_class=6, grid=(2, 2), dim=16, val_every=3, test_every=6, clips_per_shard=8)
    out = tmp_path / "projected"
    compact(src, out, project=4, project_clips=1000, progress=False)
    a, b = open_shards(src), open_shards(out)
    assert b.clip_shape == (4, 5, 4)
    record = b.manifest.extraction["tokens"]["projection"]
    assert record["components"] == 4 and record["source_dim"] == 16 and 0 < record["explained_variance"] <= 1
    array = np.load(out / "projection.npy")
    components, mean = array[:4], array[4]
    np.testing.assert_allclose(components @ components.T, np.eye(4), atol=1e-5)
    # the fit saw every training clip (and no val/test clip): its mean is theirs
    train = np.nonzero(np.isin(a.splits, ["train", ""]))[0]
    assert record["fit"]["clips"] == len(train) < len(a)
    source = a.read_tokens(range(len(a))).astype(np.float32)
    np.testing.assert_allclose(mean, source[train].reshape(-1, 16).mean(0), atol=1e-5)
    # the largest-variance direction of the training tokens, up to the sign fixed by the fit
    centred = source[train].reshape(-1, 16) - mean
    top = np.linalg.eigh(centred.T @ centred)[1][:, -1]
    assert abs(float(top @ components[0])) > 0.999
    expected = ((source - mean) @ components.T).astype(np.float16)
    np.testing.assert_array_equal(b.read_tokens(range(len(b))), expected)
    assert verify_cache(out).ok
    from step_cache.cache.summary import summarize_cache

    assert summarize_cache(out)["projection"] == record  # inspect shows it
    again = compact(src, out, project=4, project_clips=1000, progress=False)  # the same fit: resumes, nothing to do
    assert again.videos == 0 and again.skipped == len(a)
    array[0, 0] += 1
    np.save(out / "projection.npy", array)
    assert any("differs from the projection the manifest records" in p for p in verify_cache(out).problems)
    compact(src, tmp_path / "p8", dtype="int8", project=4, project_clips=1000, progress=False)
    assert open_shards(tmp_path / "p8").tokens_nbytes == len(a) * 4 * 5 * (4 + 2)
