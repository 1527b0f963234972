"""int8 quantization on the device in stage one (issue 34): ``device_quantize.quantize_tensor`` equals the numpy
quantizer bit for bit on the CPU (random tokens and every edge case the numpy one documents), values and scales come
back packed in D + 2 bytes per token (half of float16's 2 D), an ``extract --dtype int8`` cache holds exactly the
numpy quantization of the float16 tokens, and a Recognizer of an int8 run reads its frames' tokens as the cache reader
does (quantized, then dequantized), not truncated to integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY

from step_cache.cache.quantize import dequantize, quantize
from step_cache.cache.shards import open_shards
from step_cache.extraction import pipeline
from step_cache.extraction.backbones import load_backbone
from step_cache.extraction.device_quantize import pack, quantize_tensor, unpack
from step_cache.extraction.engine import extract
from step_cache.extraction.frame_batches import TokenComputer
from step_cache.extraction.pipeline import quantize_on_device


def _edge_tokens() -> np.ndarray:
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((64, 5, 24)).astype(np.float32) * rng.choice([1e-6, 1e-3, 1.0, 300.0], (64, 5, 1))
    tokens[0, 0] = 0.0  # a token of zeros: scale 0, reads back as zeros
    tokens[0, 1, 3] = np.nan  # non-finite tokens: a non-finite scale and zeros
    tokens[0, 2, 5] = np.inf
    tokens[0, 3, 7] = -np.inf
    tokens[1, 0] = 1e-9  # absmax / 127 underflows float16: the scale steps up from 0 to the smallest subnormal
    tokens[1, 1, :] = 65504.0 * 127  # the largest scale float16 holds
    tokens[1, 2, :] = 70000.0 * 127  # beyond it: an infinite scale
    tokens[1, 3] = np.arange(24) - 11.5  # halves: round half to even
    tokens[2] = np.float16(tokens[2]).astype(np.float32)  # float16-representable values, as the backbone gives
    return tokens


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_device_quantizer_equals_the_numpy_one_bit_for_bit(dtype):
    tokens = _edge_tokens()
    if dtype is np.float16:
        tokens = tokens[2:]  # float16 input: the finite rows (as stage one's float16 tokens)
    tokens = tokens.astype(dtype)
    expected_values, expected_scales = quantize(tokens)
    values, scales = quantize_tensor(torch.from_numpy(tokens))
    assert values.dtype == torch.int8 and scales.dtype == torch.float16
    np.testing.assert_array_equal(values.numpy(), expected_values)
    got, want = scales.numpy(), expected_scales
    assert np.array_equal(np.isnan(got), np.isnan(want))
    finite = ~np.isnan(want)  # NaN payloads may differ; every other scale must match to the bit
    np.testing.assert_array_equal(got[finite].view(np.uint16), want[finite].view(np.uint16))


def test_pack_puts_values_and_scales_in_d_plus_2_bytes_and_unpack_gives_them_back():
    tokens = torch.from_numpy(_edge_tokens()[2:]).half()
    values, scales = quantize_tensor(tokens)
    packed = pack(values, scales)
    assert packed.dtype == torch.int8 and packed.shape == (*tokens.shape[:-1], tokens.shape[-1] + 2)
    assert packed.numel() * packed.element_size() == tokens.numel() // 24 * 26  # D + 2 bytes for 2 D of float16
    got_values, got_scales = unpack(packed.numpy())
    np.testing.assert_array_equal(got_values, values.numpy())
    np.testing.assert_array_equal(got_scales.view(np.uint16), scales.numpy().view(np.uint16))


@pytest.mark.parametrize("in_flight", [False, True])
def test_the_token_computer_hands_back_packed_int8(in_flight):
    backbone = load_backbone("vit-tiny", "random", image_size=32)
    frames = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    plain, _ = TokenComputer(backbone, torch.device("cpu"), "float16", in_flight=in_flight)(frames)
    packed, _ = TokenComputer(backbone, torch.device("cpu"), "float16", in_flight=in_flight, quantize=True)(frames)
    values, scales = unpack(packed.numpy())
    expected_values, expected_scales = quantize(plain.numpy())
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(scales.view(np.uint16), expected_scales.view(np.uint16))


def test_int8_is_quantized_on_a_gpu_only():
    assert quantize_on_device("int8", torch.device("cuda")) and not quantize_on_device("int8", torch.device("cpu"))
    assert not quantize_on_device("float16", torch.device("cuda"))


@pytest.mark.parametrize("on_device", [False, True])
def test_an_int8_cache_holds_the_numpy_quantization_of_the_float16_tokens(video_tree, tmp_path, monkeypatch, on_device):
    """Quantized by the writer (the CPU's way) or on the device (a GPU's way, forced here): the same cache."""
    monkeypatch.setattr(pipeline, "quantize_on_device", lambda dtype, device: on_device and dtype == "int8")
    unpacked = []
    monkeypatch.setattr(pipeline, "unpack", lambda packed: unpacked.append(packed.shape) or unpack(packed))
    extract(video_tree, tmp_path / "f16", **TINY)
    extract(video_tree, tmp_path / "i8", **{**TINY, "dtype": "int8"})
    with open_shards(tmp_path / "f16") as f16, open_shards(tmp_path / "i8") as i8:
        assert list(f16.videos) == list(i8.videos)
        tokens, _ = f16.read_stored(np.arange(len(f16)))
        values, scales = i8.read_stored(np.arange(len(i8)))
    expected_values, expected_scales = quantize(tokens)
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(scales.view(np.uint16), expected_scales.view(np.uint16))
    assert len(unpacked) == (len(set(i8.videos)) if on_device else 0)  # each video's packed tokens, on the device path


def test_a_recognizer_of_an_int8_run_reads_tokens_as_the_cache_does(video_tree, tmp_path):
    from step_cache.recognition.model import RunModel
    from step_cache.training.trainer import train_probe

    extract(video_tree, tmp_path / "i8", **{**TINY, "dtype": "int8"})
    train_probe(tmp_path / "i8", "linear", tmp_path / "run", epochs=1, batch_size=4, progress=False)
    model = RunModel(tmp_path / "run", device="cpu")
    frames = np.random.default_rng(1).integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    tokens = model.encode(frames)
    pixels = model.preprocessing.resize_and_crop(frames)
    plain, _ = TokenComputer(model.computer.backbone, torch.device("cpu"), "float16")(np.ascontiguousarray(pixels))
    assert tokens.dtype == np.float16
    np.testing.assert_array_equal(tokens, dequantize(*quantize(plain.numpy())))
