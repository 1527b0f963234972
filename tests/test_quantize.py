"""int8 tokens: the quantisation error bound, the shard round trip, every reader, verify, and extract --dtype int8."""

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY

from step_cache.cache.manifest import Manifest, TokenLayout, read_manifest, settings_hash, write_manifest
from step_cache.cache.quantize import dequantize, quantize, token_bytes
from step_cache.cache.shards import ClipRecord, ShardWriter, open_shards, shard_name
from step_cache.cache.verify import verify_cache
from step_cache.extraction.engine import extract
from step_cache.training.data_source import open_token_source
from step_cache.training.token_data import select_tokens

FRAMES, GRID, DIM = 3, (2, 2), 16


def test_error_is_at_most_half_a_step_per_element():
    rng = np.random.default_rng(0)
    # tokens of very different magnitudes, including tiny ones where a float16 scale is subnormal
    x = rng.standard_normal((200, 7, 64)).astype(np.float32) * np.logspace(-6, 3, 200, dtype=np.float32)[:, None, None]
    q, scale = quantize(x)
    assert q.dtype == np.int8 and scale.dtype == np.float16 and scale.shape == x.shape[:-1]
    s = scale.astype(np.float32)
    assert (np.abs(q) <= 127).all() and (s * 127 >= np.abs(x).max(-1)).all()  # scale rounded up: nothing clips
    error = np.abs(dequantize(q, scale, np.float32) - x)
    # rounding to the nearest step: |err| <= s/2; the float32 arithmetic adds at most a few ulps of |x|
    bound = s[..., None] / 2 + 4 * np.finfo(np.float32).eps * np.abs(x)
    assert (error <= bound).all()
    # and the scale is tight: within one float16 step of absmax / 127
    assert (s <= np.abs(x).max(-1) / 127 * (1 + 2**-10) + 2**-24).all()
    # read back as float16, the float16 rounding of the result adds at most 2^-11 relative
    error16 = np.abs(dequantize(q, scale, np.float16).astype(np.float32) - x)
    assert (error16 <= bound + np.abs(x) * 2**-11 * 1.01).all()


def test_zero_and_non_finite_tokens():
    x = np.zeros((3, 4), np.float32)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    q, scale = quantize(x)
    out = dequantize(q, scale, np.float32)
    assert (out[0] == 0).all() and scale[0] == 0  # zeros read back exactly
    assert not np.isfinite(out[1]).any() and not np.isfinite(out[2]).any()  # stays visible to verify
    q_neg, _ = quantize(-np.arange(8, dtype=np.float32))
    q_pos, _ = quantize(np.arange(8, dtype=np.float32))
    np.testing.assert_array_equal(q_neg, -q_pos)  # symmetric


def test_bytes_per_token():
    assert token_bytes("int8", 384) == 386 and token_bytes("float16", 384) == 768 and token_bytes("float32", 3) == 12
    assert TokenLayout(1, (16, 16), 768, "int8").clip_bytes(16) / TokenLayout(1, (16, 16), 768).clip_bytes(16) < 0.51


def write_int8_cache(directory, clips=5):
    layout = TokenLayout(cls_tokens=1, grid=GRID, dim=DIM, dtype="int8")
    extraction = {
        "backbone": {"name": "fake"},
        "weights": {"source": "random", "seed": 0},
        "preprocessing": {},
        "sampling": {"frames": FRAMES, "clips": 1},
        "tokens": layout.to_dict(),
    }
    manifest = Manifest(extraction=extraction, classes=["a", "b"])
    writer = ShardWriter(directory, shard_name(0), layout, FRAMES, settings=settings_hash(extraction))
    rng = np.random.default_rng(1)
    originals = rng.standard_normal((clips, FRAMES, 5, DIM)).astype(np.float32) * 3
    for i, tokens in enumerate(originals):
        writer.append(
            ClipRecord(tokens, i % 2, f"v{i}.mp4", 0, "val" if i == 4 else "train", np.arange(FRAMES), 9, False)
        )
    manifest.shards.append(writer.finish())
    write_manifest(directory, manifest)
    return originals


def test_int8_shards_round_trip_through_every_reader(tmp_path):
    originals = write_int8_cache(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["format_version"] == 2 and data["extraction"]["tokens"]["dtype"] == "int8"
    assert data["extraction"]["tokens"]["scale_dtype"] == "float16"
    with h5py.File(tmp_path / shard_name(0)) as handle:
        assert handle.attrs["format_version"] == 2
        assert handle["tokens"].dtype == np.int8 and handle["token_scales"].shape == (5, FRAMES, 5)
        q, scales = handle["tokens"][...], handle["token_scales"][...]
    expected = dequantize(q, scales, np.float16)
    step = np.abs(originals).max(-1, keepdims=True) / 127 * (1 + 2**-10)
    assert (np.abs(expected.astype(np.float32) - originals) <= step / 2 + np.abs(originals) * 2**-10).all()

    shards = open_shards(tmp_path)
    assert shards.layout.read_dtype == np.float16 and shards.tokens_nbytes == 5 * FRAMES * 5 * (DIM + 2)
    tokens = shards.read_tokens([3, 0, 3])
    assert tokens.dtype == np.float16
    np.testing.assert_array_equal(tokens, expected[[3, 0, 3]])
    np.testing.assert_array_equal(shards.read_shard_tokens(0), expected)
    for subset in ("all", "cls", "patches"):
        selection = select_tokens(shards.layout, subset)
        want = selection.apply(expected)
        for mode in ("memory", "streaming", "device"):  # device: int8 held as stored, dequantised there
            source = open_token_source(shards, np.arange(5), selection, shards.labels, mode=mode, workers=0)
            if mode != "streaming":
                assert source.tokens.dtype in (np.int8, torch.int8)  # held as stored: half the RAM of float16
            (batch, _labels, _index), *_ = list(source.batches([np.array([4, 1])]))
            assert batch.dtype == torch.float16
            np.testing.assert_array_equal(batch.numpy(), want[[4, 1]])
            source.close()
    assert verify_cache(tmp_path).ok


def test_verify_finds_missing_scales_and_non_finite_int8_tokens(tmp_path):
    write_int8_cache(tmp_path)
    path = tmp_path / shard_name(0)
    with h5py.File(path, "a") as handle:
        handle["token_scales"][2, 1, 0] = np.inf
    report = verify_cache(tmp_path, checksums=False)
    assert any("NaN/Inf in 1 clip(s), e.g. row 2 (v2.mp4)" in p for p in report.problems), report.problems
    with h5py.File(path, "a") as handle:
        del handle["token_scales"]
    report = verify_cache(tmp_path, checksums=False)
    assert any("token_scales missing" in p for p in report.problems), report.problems


def test_a_version_2_cache_reads_and_unknown_dtypes_are_refused(tmp_path):
    write_int8_cache(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["extraction"]["tokens"]["dtype"] = "int4"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown token dtype 'int4'"):
        read_manifest(tmp_path)


def test_extract_int8_equals_float16_quantized(_video_tree, tmp_path):
    """extract --dtype int8 stores exactly the float16 extraction's tokens, quantized."""
    extract(_video_tree, tmp_path / "f16", **TINY)
    extract(_video_tree, tmp_path / "i8", dtype="int8", **TINY)
    f16, i8 = open_shards(tmp_path / "f16"), open_shards(tmp_path / "i8")
    assert i8.manifest.layout.dtype == "int8" and list(i8.videos) == list(f16.videos)
    q, scales = i8.read_stored(range(len(i8)))
    q_expected, scales_expected = quantize(f16.read_tokens(range(len(f16))))
    np.testing.assert_array_equal(q, q_expected)
    np.testing.assert_array_equal(scales, scales_expected)
    assert verify_cache(tmp_path / "i8").ok
    assert i8.tokens_nbytes / f16.tokens_nbytes == (192 + 2) / 384
    on_disk = sum(r.bytes for r in i8.manifest.shards) / sum(r.bytes for r in f16.manifest.shards)
    assert on_disk < 0.75  # these clips are so small (5 x 192 values) that HDF5's own metadata counts


def test_the_loaders_torch_dequantization_equals_the_reference():
    from step_cache.training.token_data import as_tensor

    rng = np.random.default_rng(3)
    x = (
        rng.standard_normal((64, 4, 9, 32)).astype(np.float32)
        * np.logspace(-3, 4, 64, dtype=np.float32)[:, None, None, None]
    )
    q, scales = quantize(x)
    got = as_tensor(q, scales, np.dtype(np.float16))
    assert got.dtype == torch.float16
    np.testing.assert_array_equal(got.numpy(), dequantize(q, scales, np.float16))
