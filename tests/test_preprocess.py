import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from step_cache.extraction.preprocess import Preprocessing, PreprocessingError


def _frames(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Two real-looking frames of this (height, width): a smooth colour gradient with noise, and pure noise."""
    height, width = shape
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    gradient = np.stack([255 * x / max(1, width - 1), 255 * y / max(1, height - 1), 128 + 0 * x], axis=-1)
    noisy = np.clip(gradient + rng.normal(0, 12, gradient.shape), 0, 255).astype(np.uint8)
    return np.stack([noisy, rng.integers(0, 256, (height, width, 3), dtype=np.uint8)])


def _assert_same_as_timm(config: dict, frames: np.ndarray) -> None:
    """Our uint8 resize/crop + device normalisation against timm's eval transform on PIL images.

    Both sides resize the same uint8 PIL image with the same PIL call and crop/pad the same pixels, so the uint8
    pixels must be identical; only the float32 normalisation differs in operation order ((x - 255m) / 255s versus
    (x / 255 - m) / s): a few roundings of relative size 2^-24 on values |v| <= (1 - 0) / 0.22 < 5, i.e. < 1e-6.
    atol 1e-5 leaves room for that and is still 50x below one uint8 step (1 / 255 / std >= 7.8e-3). The uint8
    comparison below is exact: timm's values mapped back to 0..255 land within 1e-5 * 255 * std of an integer."""
    reference = create_transform(**config, is_training=False)
    ours = Preprocessing.from_timm_config(config)
    height, width = config["input_size"][1:]
    pixels = ours.resize_and_crop(frames)
    assert pixels.shape == (len(frames), 3, height, width) and pixels.dtype == np.uint8
    actual = ours.normalise(torch.from_numpy(pixels))
    expected = torch.stack([reference(Image.fromarray(frame)) for frame in frames])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    expected_pixels = ((expected * std + mean) * 255).round().to(torch.uint8)
    assert torch.equal(torch.from_numpy(pixels), expected_pixels), "uint8 pixels differ from timm's"


@pytest.mark.parametrize(
    "model_name,shape",
    [
        ("vit_base_patch16_clip_224.openai", (240, 320)),  # center, bicubic, crop_pct 0.9: resize to 248, crop 224
        ("vit_small_patch14_dinov2.lvd142m", (320, 240)),  # center, portrait frame, crop_pct 1.0
        ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", (101, 131)),  # odd sizes, upsampling
        ("cspdarknet53.ra_in1k", (180, 320)),  # center, bilinear, crop_pct 0.887
        ("vit_medium_patch16_gap_384.sw_in12k_ft_in1k", (240, 320)),  # squash, crop_pct 0.95
        ("vit_small_patch16_lingbot.robbyant", (360, 640)),  # squash, bilinear, 512
        ("vit_base_patch16_sapiens2.fb", (240, 320)),  # squash to a non-square 1024 x 768 input
        ("deepseek_vit_412m.deepseek_v4_flash_vision_exp", (240, 427)),  # border: fit inside, pad with the mean
    ],
)
def test_matches_timm_eval_transform_of_the_model(model_name, shape):
    if model_name not in timm.list_models(model_name, pretrained=True):  # newer than the installed timm
        pytest.skip(f"{model_name} is not in timm {timm.__version__}")
    # Built on the meta device: the data config comes from timm's offline pretrained_cfg, no weights are made.
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False)
    config = resolve_data_config({}, model=model)
    _assert_same_as_timm(config, _frames(shape))


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"])
@pytest.mark.parametrize(
    "input_size,crop_pct,shape",
    [
        ((3, 32, 32), 0.875, (24, 40)),  # landscape, upsampled
        ((3, 40, 24), 0.9, (30, 50)),  # non-square input, landscape frame
        ((3, 24, 40), 1.0, (61, 33)),  # non-square input, portrait frame
        ((3, 32, 32), 1.15, (45, 45)),  # crop_pct > 1: the resized frame is smaller than the crop and is padded
    ],
)
def test_matches_timm_for_every_crop_mode_and_interpolation(crop_mode, interpolation, input_size, crop_pct, shape):
    config = {
        "input_size": input_size,
        "interpolation": interpolation,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }
    _assert_same_as_timm(config, _frames(shape, seed=len(interpolation)))


def test_unknown_interpolation_or_crop_mode_is_refused():
    config = {"input_size": (3, 8, 8), "mean": (0, 0, 0), "std": (1, 1, 1), "crop_pct": 1.0}
    with pytest.raises(PreprocessingError, match="interpolation 'area'"):
        Preprocessing.from_timm_config({**config, "interpolation": "area"})
    with pytest.raises(PreprocessingError, match="crop mode 'zoom'"):
        Preprocessing.from_timm_config({**config, "interpolation": "bicubic", "crop_mode": "zoom"})


def test_manifest_dict_of_a_square_centre_crop_is_unchanged_and_others_name_their_mode():
    base = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    centre = Preprocessing.from_timm_config({**base, "crop_pct": 0.9}).to_dict()
    # the keys written before crop modes were supported: a cache extracted then still resumes
    assert centre == {
        "crop": 224,
        "resize_shorter": 248,
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    squash = Preprocessing.from_timm_config({**base, "crop_pct": 1.0, "crop_mode": "squash"}).to_dict()
    assert squash["crop_mode"] == "squash" and squash["scale_size"] == [224, 224] and "resize_shorter" not in squash
    tall = Preprocessing.from_timm_config({**base, "input_size": (3, 1024, 768), "crop_pct": 1.0}).to_dict()
    assert tall["crop"] == [1024, 768] and tall["crop_mode"] == "center"


def test_from_timm_config_reads_crop_pct_and_statistics():
    config = {
        "input_size": (3, 224, 224),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.1, 0.2, 0.3),
        "std": (0.4, 0.5, 0.6),
    }
    spec = Preprocessing.from_timm_config(config)
    assert (spec.crop, spec.scale, spec.crop_mode) == (224, 248, "center")
    assert spec.mean == (0.1, 0.2, 0.3) and spec.std == (0.4, 0.5, 0.6)
    assert Preprocessing.from_timm_config(config, crop=112).scale == 124


def test_normalise_uses_mean_and_std():
    spec = Preprocessing(crop=2, scale=2, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    values = spec.normalise(white)[0, :, 0, 0].tolist()
    assert values == pytest.approx([2.0, 1.0, 0.5])


def test_inspect_names_the_crop_size_and_a_mode_other_than_centre():
    from step_cache.cache.summary import _crop_text

    assert _crop_text({"crop": 224, "resize_shorter": 256}) == "224 px crop"  # a manifest written before modes
    assert _crop_text({"crop": [1024, 768], "crop_mode": "squash", "scale_size": [1024, 768]}) == (
        "1024x768 px crop (squash)"
    )
