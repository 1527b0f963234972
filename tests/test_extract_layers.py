"""``extract --layers``: the tokens of each stored block equal timm's ``forward_intermediates(norm=True)`` (and
DINOv2's ``get_intermediate_layers(norm=True)`` semantics: the final norm on each block, CLS kept, registers
dropped) to 0 in float32 with random weights; int8, pooling and views work per layer; ``last`` is today's cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY

from step_cache import extract, open_shards
from step_cache.cache.layers import kept_layers, parse_blocks
from step_cache.cache.quantize import quantize
from step_cache.errors import InputError
from step_cache.extraction.backbones import load_backbone
from step_cache.extraction.video import decode_clips

# One video per frame batch (batch_size = frames), so the reference runs the model on the same batches, bit for bit.
EXACT = {**TINY, "dtype": "float32", "batch_size": 4}


def model_input(backbone, path) -> tuple[torch.Tensor, list[int]]:
    decoded = decode_clips(path, frames=4)
    pixels = backbone.preprocessing.normalise(torch.from_numpy(backbone.preprocessing.resize_and_crop(decoded.frames)))
    return pixels, decoded.frame_indices[0].tolist()


def dinov2_intermediate_layers(model, pixels, blocks, registers):
    """DINOv2's get_intermediate_layers(norm=True, return_class_token=True), written out on timm's modules: run the
    blocks, final-norm each chosen output, split off the class token and drop the registers."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(pixels)))
    outputs = []
    for index, block in enumerate(model.blocks):
        x = block(x)
        if index in blocks:
            outputs.append(model.norm(x))
    return [(out[:, 1 + registers :], out[:, 0]) for out in outputs]


@pytest.mark.parametrize(
    ("backbone_name", "spec", "blocks", "registers"),
    [
        ("vit-tiny", "0,5,-1", (0, 5, 11), 0),
        ("dinov2-s", "last4", (8, 9, 10, 11), 0),
        ("dinov2-s-reg", "2,11", (2, 11), 4),
    ],
)
def test_each_layer_equals_timms_forward_intermediates(video_tree, tmp_path, backbone_name, spec, blocks, registers):
    size = 28 if backbone_name.startswith("dinov2") else 32  # a 2 x 2 patch grid either way
    options = {**EXACT, "backbone": backbone_name, "image_size": size}
    extract(video_tree / "slide_left", tmp_path / "layers", layers=spec, **options)
    shards = open_shards(tmp_path / "layers")
    assert shards.layout.layers == blocks and shards.manifest.to_dict()["format_version"] == 5
    backbone = load_backbone(backbone_name, weights="random", image_size=size)  # the same seeded weights
    model = backbone.model
    assert backbone.registers == registers
    for index, video in enumerate(shards.videos.tolist()):
        pixels, frame_indices = model_input(backbone, video_tree / "slide_left" / video)
        assert shards.frame_indices[index].tolist() == frame_indices
        stored = torch.from_numpy(shards.read_tokens([index])[0])  # (L, T, P, D)
        with torch.inference_mode():
            reference = model.forward_intermediates(
                pixels, indices=list(blocks), norm=True, output_fmt="NLC", intermediates_only=True,
                return_prefix_tokens=True,
            )  # fmt: skip
            written_out = dinov2_intermediate_layers(model, pixels, blocks, registers)
            last = model.forward_features(pixels)
        for layer, ((patches, prefix), (dino_patches, dino_cls)) in enumerate(zip(reference, written_out, strict=True)):
            assert torch.equal(stored[layer, :, :1], prefix[:, :1])  # the CLS token; registers dropped
            assert torch.equal(stored[layer, :, 1:], patches)
            assert torch.equal(stored[layer, :, 0], dino_cls) and torch.equal(stored[layer, :, 1:], dino_patches)
        if blocks[-1] == len(model.blocks) - 1:  # the last block's entry is forward_features' output
            assert torch.equal(stored[-1, :, :1], last[:, :1]) and torch.equal(
                stored[-1, :, 1:], last[:, 1 + registers :]
            )


def test_last_is_todays_cache_and_the_last_layer_matches_it(video_tree, tmp_path):
    plain = extract(video_tree / "slide_right", tmp_path / "plain", **EXACT).manifest
    assert "layers" not in plain.extraction["tokens"] and plain.to_dict()["format_version"] == 1
    assert "layers" not in plain.source["request"]
    extract(video_tree / "slide_right", tmp_path / "both", layers="10,11", **EXACT)
    a, b = open_shards(tmp_path / "plain"), open_shards(tmp_path / "both")
    assert a.videos.tolist() == b.videos.tolist()
    np.testing.assert_array_equal(b.read_tokens(range(len(b)), layers=[1])[:, 0], a.read_tokens(range(len(a))))


def test_int8_pooling_and_views_work_per_layer(video_tree, tmp_path):
    options = {**TINY, "batch_size": 4, "image_size": 64}  # a 4 x 4 patch grid, pooled 2 x 2
    extract(video_tree / "slide_left", tmp_path / "f16", layers="last2", pool_patches=2, views=1, **options)
    extract(
        video_tree / "slide_left", tmp_path / "i8", layers="last2", pool_patches=2, views=1, dtype="int8", **options
    )
    f16, i8 = open_shards(tmp_path / "f16"), open_shards(tmp_path / "i8")
    assert f16.layout.layers == (10, 11) and f16.clip_shape == (4, 1 + 2 * 2, 192) and (f16.views == 1).sum() > 0
    values, scales = i8.read_stored(range(len(i8)))
    expected_values, expected_scales = quantize(f16.read_tokens(range(len(f16))))  # quantized per token, per layer
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(scales, expected_scales)
    assert values.shape == (len(i8), 2, 4, 5, 192)
    tokens = f16.read_tokens(range(len(f16)))
    assert not np.array_equal(tokens[:, 0], tokens[:, 1])  # two different blocks


def test_layer_specs_and_their_errors():
    assert parse_blocks("last", 12) is None
    assert parse_blocks("last4", 12) == (8, 9, 10, 11)
    assert parse_blocks("11,-4, 0", 12) == (0, 8, 11)
    with pytest.raises(InputError, match=r"layers='12': block\(s\) \[12\] outside the model's blocks 0..11"):
        parse_blocks("12", 12)
    with pytest.raises(InputError, match=r"lastN takes N in 1\.\.12"):
        parse_blocks("last13", 12)
    with pytest.raises(InputError, match="a block is named twice"):
        parse_blocks("11,-1", 12)
    with pytest.raises(InputError, match="expected last, lastN or comma-separated block indices"):
        parse_blocks("final", 12)
    assert kept_layers("last2", (8, 9, 10, 11)) == (2, 3) and kept_layers("11,8", (8, 9, 10, 11)) == (0, 3)
    with pytest.raises(InputError, match=r"block\(s\) \[7\] not in the cache, which stores \[8, 9, 10, 11\]"):
        kept_layers("7", (8, 9, 10, 11))


def test_a_bad_spec_is_refused_before_anything_is_written(video_tree, tmp_path):
    with pytest.raises(InputError, match="layers='top'"):
        extract(video_tree / "slide_left", tmp_path / "x", layers="top", **TINY)
    with pytest.raises(InputError, match=r"layers='20': block\(s\) \[20\] outside the model's blocks 0..11"):
        extract(video_tree / "slide_left", tmp_path / "y", layers="20", **TINY)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "manifest.json").exists()


def test_compact_keeps_a_subset_of_layers_and_inspect_shows_them(video_tree, tmp_path):
    from step_cache.cache.compact import compact
    from step_cache.cache.summary import format_summary, summarize_cache

    extract(video_tree / "slide_left", tmp_path / "src", layers="last3", **EXACT)
    report = compact(tmp_path / "src", tmp_path / "dst", layers="9,11", dtype="float16", progress=False)
    src, dst = open_shards(tmp_path / "src"), open_shards(tmp_path / "dst")
    assert dst.layout.layers == (9, 11) and report.manifest.storage["cls_copy"] is True
    expected = src.read_tokens(range(len(src)), layers=[0, 2]).astype(np.float16)
    np.testing.assert_array_equal(dst.read_tokens(range(len(dst))), expected)
    # the settings and values extract --layers 9,11 --dtype float16 writes
    extract(video_tree / "slide_left", tmp_path / "direct", layers="9,11", **{**EXACT, "dtype": "float16"})
    direct = open_shards(tmp_path / "direct")
    assert direct.manifest.extraction == dst.manifest.extraction and direct.videos.tolist() == dst.videos.tolist()
    np.testing.assert_array_equal(direct.read_tokens(range(len(direct))), dst.read_tokens(range(len(dst))))
    text = format_summary(summarize_cache(tmp_path / "dst"))
    assert "layers     2 blocks [9, 11] (0-based), each through the final norm" in text
    assert "CLS tokens also stored apart" in text
    with pytest.raises(InputError, match=r"block\(s\) \[8\] not in the cache, which stores \[9, 10, 11\]"):
        compact(tmp_path / "src", tmp_path / "bad", layers="8", progress=False)
    # pooling a cache of several layers pools each layer alike
    from step_cache.cache.compact import pool_grid

    compact(tmp_path / "src", tmp_path / "pooled", pool_patches=2, progress=False)
    pooled = open_shards(tmp_path / "pooled")
    assert pooled.layout.layers == (9, 10, 11) and pooled.clip_shape == (4, 2, 192)
    source = src.read_tokens(range(len(src)), np.float32)
    for layer in range(3):
        expected = pool_grid(source[:, layer], 1, (2, 2), 2).astype(np.float32)
        np.testing.assert_array_equal(pooled.read_tokens(range(len(pooled)), np.float32)[:, layer], expected)
