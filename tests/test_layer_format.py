"""Shard format 5: a layer axis (``tokens.layers``) and the CLS copy (``storage.cls_copy``), read by layer and by
part (``ShardSet.read_stored(indices, layers, part)``); older caches still read as before."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from step_cache.cache.manifest import (
    LAYERS_FORMAT_VERSION,
    Manifest,
    ManifestError,
    TokenLayout,
    read_manifest,
    settings_hash,
    write_manifest,
)
from step_cache.cache.quantize import quantize
from step_cache.cache.shards import ClipRecord, ShardWriter, open_shards, shard_name
from step_cache.cache.writer import merged_storage, storage_record
from step_cache.errors import InputError

FRAMES, DIM = 3, 8


def layout(layers=None, dtype="float16", cls_tokens=1):
    return TokenLayout(cls_tokens=cls_tokens, grid=(2, 2), dim=DIM, dtype=dtype, layers=layers)


def write_cache(directory, token_layout, clips=(3, 2), cls_copy=True):
    """Shards of random tokens ([L,] T, P, D); returns the tokens as an int8 cache reads them back (or as given)."""
    rng = np.random.default_rng(0)
    extraction = {
        "backbone": {"name": "fake"},
        "weights": {"source": "random", "seed": 0},
        "preprocessing": {},
        "sampling": {"frames": FRAMES, "clips": 1},
        "tokens": token_layout.to_dict(),
    }
    manifest = Manifest(extraction=extraction, classes=["a", "b"])
    manifest.storage = {"compression": "none", **({"cls_copy": True} if cls_copy else {})}
    shape = (*((len(token_layout.layers),) if token_layout.layers else ()), FRAMES, token_layout.tokens_per_frame, DIM)
    written, n = [], 0
    for index, count in enumerate(clips):
        writer = ShardWriter(
            directory, shard_name(index), token_layout, FRAMES, settings=settings_hash(extraction), cls_copy=cls_copy
        )
        for _ in range(count):
            tokens = rng.standard_normal(shape).astype(np.float16)
            writer.append(ClipRecord(tokens, n % 2, f"v{n}.mp4", 0, "train", np.arange(FRAMES), 9, False))
            if token_layout.quantized:
                q, s = quantize(tokens)
                tokens = (q.astype(np.float32) * s.astype(np.float32)[..., None]).astype(np.float16)
            written.append(tokens)
            n += 1
        manifest.shards.append(writer.finish())
    write_manifest(directory, manifest)
    return np.stack(written)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_a_layered_cache_reads_every_layer_a_subset_and_the_cls_tokens(tmp_path, dtype):
    tokens = write_cache(tmp_path, layout((8, 9, 10, 11), dtype))
    shards = open_shards(tmp_path)
    assert read_manifest(tmp_path).to_dict()["format_version"] == LAYERS_FORMAT_VERSION == 5
    assert shards.layout.layers == (8, 9, 10, 11) and shards.clip_shape == (FRAMES, 5, DIM)
    assert shards.tokens_nbytes == 5 * 4 * FRAMES * 5 * (DIM * 2 if dtype == "float16" else DIM + 2)
    order = [4, 0, 3, 3, 1]
    np.testing.assert_array_equal(shards.read_tokens(order), tokens[order])  # (n, L, T, P, D)
    np.testing.assert_array_equal(shards.read_tokens(order, layers=[3, 1]), tokens[order][:, [3, 1]])
    np.testing.assert_array_equal(shards.read_tokens(order, layers=[2], part="cls"), tokens[order][:, [2], :, :1])
    np.testing.assert_array_equal(shards.read_tokens(order, part="cls"), tokens[order][..., :1, :])
    np.testing.assert_array_equal(shards.read_shard_tokens(1, layers=[0]), tokens[3:, [0]])
    values, scales = shards.read_stored([2], layers=[1], part="cls")
    assert values.shape == (1, 1, FRAMES, 1, DIM) and (scales is None) == (dtype == "float16")
    with h5py.File(tmp_path / "shard-00000.h5", "r") as shard:
        assert shard.attrs["format_version"] == 5
        assert shard["tokens"].shape == (3, 4, FRAMES, 5, DIM) and shard["tokens"].chunks == (1, 1, FRAMES, 5, DIM)
        assert shard["cls"].shape == (3, 4, FRAMES, 1, DIM) and shard["cls"].chunks == (64, 1, FRAMES, 1, DIM)
        if dtype == "int8":
            assert shard["token_scales"].chunks == (1, 1, FRAMES, 5) and shard["cls_scales"].shape == (3, 4, FRAMES, 1)
            np.testing.assert_array_equal(shard["cls_scales"][...], shard["token_scales"][..., :1])
        np.testing.assert_array_equal(shard["cls"][...], shard["tokens"][..., :1, :])


def test_a_cls_only_read_reads_the_copy_where_there_is_one(tmp_path):
    tokens = write_cache(tmp_path, layout())
    with h5py.File(tmp_path / "shard-00001.h5", "r+") as shard:  # tell the copy apart from the tokens
        shard["cls"][...] = 7
    shards = open_shards(tmp_path, check=False)
    assert shards.read_tokens([0, 4], part="cls")[1].max() == 7
    np.testing.assert_array_equal(shards.read_tokens([0], part="cls"), tokens[[0]][..., :1, :])
    np.testing.assert_array_equal(shards.read_tokens([4]), tokens[[4]])  # the tokens themselves unchanged


def test_a_cache_without_the_copy_or_layers_reads_as_before(tmp_path):
    tokens = write_cache(tmp_path, layout(), cls_copy=False)
    with h5py.File(tmp_path / "shard-00000.h5", "r") as shard:
        assert "cls" not in shard and shard.attrs["format_version"] == 1 and shard["tokens"].ndim == 4
    shards = open_shards(tmp_path)
    assert read_manifest(tmp_path).to_dict()["format_version"] == 1
    np.testing.assert_array_equal(shards.read_tokens([1, 3]), tokens[[1, 3]])
    np.testing.assert_array_equal(shards.read_tokens([1, 3], part="cls"), tokens[[1, 3]][..., :1, :])
    np.testing.assert_array_equal(shards.read_tokens([2], layers=[0]), tokens[[2]])  # the one stored layer
    with pytest.raises(InputError, match=r"1 stored layer\(s\) \(the last block only\) must be in 0..0, got \[1\]"):
        shards.read_tokens([0], layers=[1])
    with pytest.raises(InputError, match="part must be one of all, cls, got 'patches'"):
        shards.read_tokens([0], part="patches")


def test_cls_reads_refuse_a_cache_without_cls_tokens(tmp_path):
    write_cache(tmp_path, layout(cls_tokens=0), cls_copy=False)
    with pytest.raises(InputError, match="no CLS token"):
        open_shards(tmp_path).read_tokens([0], part="cls")


def test_the_copy_is_decided_once_per_cache():
    manifest = Manifest(extraction={"tokens": layout().to_dict()}, classes=[])
    assert storage_record(manifest, "none") == {"compression": "none", "cls_copy": True}  # a new cache
    manifest.shards = ["a shard written before the copy existed"]  # a resumed cache keeps what it has
    assert storage_record(manifest, "lz4") == {"compression": "lz4"}
    manifest.extraction["tokens"] = layout(cls_tokens=0).to_dict()
    manifest.shards = []
    assert storage_record(manifest, "none") == {"compression": "none"}
    parts = [Manifest(extraction={}, classes=[], storage={"compression": "none", "cls_copy": True}) for _ in "ab"]
    assert merged_storage(parts) == {"compression": "none", "cls_copy": True}
    parts[1].storage = {"compression": "none"}
    assert merged_storage(parts) == {"compression": "none"}


def test_layers_absent_keep_the_settings_and_bad_layers_are_refused(tmp_path):
    assert "layers" not in layout().to_dict() and layout((8, 11)).to_dict()["layers"] == [8, 11]
    assert TokenLayout.from_dict(layout((8, 11)).to_dict()) == layout((8, 11))
    assert layout((8, 11)).clip_bytes(FRAMES) == 2 * layout().clip_bytes(FRAMES)
    write_cache(tmp_path, layout((2, 5)))
    path = tmp_path / "manifest.json"
    data = json.loads(path.read_text())
    data["extraction"]["tokens"]["layers"] = [5, 2]
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"tokens.layers must list ascending block indices >= 0, got \[5, 2\]"):
        read_manifest(tmp_path, check_seal=False)


def test_verify_checks_the_layer_axis_and_the_cls_copy(tmp_path):
    from step_cache.cache.verify import verify_cache

    write_cache(tmp_path, layout((3, 7), "int8"))
    assert verify_cache(tmp_path).ok
    with h5py.File(tmp_path / "shard-00001.h5", "r+") as shard:
        shard["cls_scales"][0, 1, 0, 0] = 0.5  # the copy no longer matches the scales it copies
    report = verify_cache(tmp_path, checksums=False)
    assert any("cls_scales differs from the CLS tokens in token_scales" in p for p in report.problems), report.problems
