import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config

from step_cache.extraction.preprocess import Preprocessing


@pytest.mark.parametrize(
    "model_name,shape",
    [
        ("vit_base_patch16_clip_224.openai", (240, 320, 3)),  # crop_pct 0.9: resize to 248 then crop 224
        ("vit_small_patch14_dinov2.lvd142m", (320, 240, 3)),  # portrait frame, crop_pct 1.0
        ("vit_tiny_patch16_224.augreg_in21k_ft_in1k", (101, 131, 3)),  # odd sizes, upsampling
    ],
)
def test_matches_timm_eval_transform(model_name, shape):
    model = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=224)
    config = resolve_model_data_config(model)
    config["input_size"] = (3, 224, 224)
    reference = create_transform(**config, is_training=False)
    ours = Preprocessing.from_timm_config(config)
    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

    expected = reference(Image.fromarray(frame))
    pixels = ours.resize_and_crop(frame[None])
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == np.uint8
    actual = ours.normalise(torch.from_numpy(pixels))[0]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_from_timm_config_reads_crop_pct_and_statistics():
    config = {
        "input_size": (3, 224, 224),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.1, 0.2, 0.3),
        "std": (0.4, 0.5, 0.6),
    }
    spec = Preprocessing.from_timm_config(config)
    assert (spec.crop, spec.resize_shorter) == (224, 248)
    assert spec.mean == (0.1, 0.2, 0.3) and spec.std == (0.4, 0.5, 0.6)
    assert Preprocessing.from_timm_config(config, crop=112).resize_shorter == 124


def test_normalise_uses_mean_and_std():
    spec = Preprocessing(crop=2, resize_shorter=2, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    values = spec.normalise(white)[0, :, 0, 0].tolist()
    assert values == pytest.approx([2.0, 1.0, 0.5])
