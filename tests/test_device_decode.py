"""The GPU decode path (--decoder torchcodec-cuda) run on the CPU: torchcodec decoding on the CPU device, torch
resizing CPU tensors, one decoding thread feeding the batcher with tensors. Only NVDEC itself is not exercised
(no GPU here)."""

import av  # before decord: decord's bundled FFmpeg, loaded first, breaks PyAV's libvpx-vp9 encoder
import numpy as np
import pytest
import torch
from conftest import GOOD_VIDEOS, TINY

from step_cache import extract, open_shards
from step_cache.extraction import device_decode
from step_cache.extraction.decode_pool import DecodePool, DecodeTask
from step_cache.extraction.decoders import decoder_spec
from step_cache.extraction.device_decode import DeviceDecodeError, DeviceDecodePool
from step_cache.extraction.device_preprocess import DevicePreprocessingError, resize_and_crop_tensor
from step_cache.extraction.preprocess import Preprocessing
from step_cache.extras import MissingExtraError

del av
try:
    decoder_spec("torchcodec")
    HAVE_TORCHCODEC = True
except MissingExtraError:
    HAVE_TORCHCODEC = False
needs_torchcodec = pytest.mark.skipif(not HAVE_TORCHCODEC, reason="torchcodec is not installed here")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _smooth_frames(height: int, width: int, count: int = 3) -> np.ndarray:
    """Camera-like frames (smooth gradients and blobs): noise would only test the filters' ringing."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    frames = [
        np.stack([np.sin(7 * x + k) * np.cos(5 * y), np.cos(9 * x * y + k), np.sin(3 * (x + y) + 2 * k)], -1)
        for k in range(count)
    ]
    return ((np.stack(frames) + 1) * 127.5).astype(np.uint8)


@pytest.mark.parametrize(
    "preprocessing",
    [
        Preprocessing(crop=112, scale=128, interpolation="bicubic", mean=MEAN, std=STD),  # timm's usual
        Preprocessing(crop=224, scale=256, interpolation="bilinear", mean=MEAN, std=STD),  # upsampling
        Preprocessing(crop=(96, 128), scale=(109, 146), interpolation="bicubic", mean=MEAN, std=STD),
        Preprocessing(crop=112, scale=112, interpolation="bilinear", mean=MEAN, std=STD, crop_mode="squash"),
        Preprocessing(crop=112, scale=128, interpolation="bicubic", mean=MEAN, std=STD, crop_mode="border"),
        Preprocessing(crop=300, scale=320, interpolation="bilinear", mean=MEAN, std=STD, crop_mode="border"),
    ],
)
@pytest.mark.parametrize("size", [(240, 320), (360, 270), (72, 96)])
def test_resizing_on_the_device_matches_pil_to_one_level(preprocessing, size):
    frames = _smooth_frames(*size)
    expected = preprocessing.resize_and_crop(frames).astype(int)
    got = resize_and_crop_tensor(preprocessing, torch.from_numpy(frames).permute(0, 3, 1, 2))
    assert got.dtype == torch.uint8 and got.shape == expected.shape
    # the same sizes, crops and padding; PIL resamples in fixed point, torch in float: at most one level apart
    assert np.abs(got.numpy().astype(int) - expected).max() <= 1


@pytest.mark.parametrize("interpolation", ["nearest", "lanczos", "box", "hamming"])
def test_a_filter_torch_does_not_reproduce_is_refused(interpolation):
    other = Preprocessing(crop=112, scale=128, interpolation=interpolation, mean=MEAN, std=STD)
    with pytest.raises(DevicePreprocessingError, match=f"'{interpolation}', which the GPU decode path cannot"):
        resize_and_crop_tensor(other, torch.zeros((1, 3, 64, 64), dtype=torch.uint8))


def test_the_gpu_decoder_needs_a_cuda_device():
    with pytest.raises(DeviceDecodeError, match="decodes on a CUDA GPU, but extraction runs on cpu: use device='cuda'"):
        DeviceDecodePool("torchcodec-cuda", torch.device("cpu"), frames=4, clips=1)


@pytest.fixture
def cpu_as_device(monkeypatch):
    monkeypatch.setattr(device_decode, "DEVICE_TYPES", ("cuda", "cpu"))


@needs_torchcodec
def test_the_device_pool_gives_the_cpu_pools_results_as_tensors(video_tree, cpu_as_device):
    preprocessing = Preprocessing(crop=32, scale=36, interpolation="bicubic", mean=MEAN, std=STD)
    paths = sorted(str(p) for p in video_tree.rglob("*.mp4"))
    tasks = [DecodeTask(i, path, None, None) for i, path in enumerate(paths)]
    on_cpu = list(DecodePool(0, 4, 2, decoder="torchcodec").run(tasks, preprocessing))
    device_pool = DeviceDecodePool("torchcodec-cuda", torch.device("cpu"), 4, 2, prefetch=3)
    on_device = list(device_pool.run(tasks, preprocessing))
    assert [r.task_id for r in on_device] == list(range(len(tasks)))  # task order, as the CPU pool
    for cpu, device in zip(on_cpu, on_device, strict=True):
        assert device.error == cpu.error  # failures: the same one reason
        if cpu.error is None:
            assert isinstance(device.frames, torch.Tensor) and device.frames.shape == (8, 3, 32, 32)
            assert np.abs(device.frames.numpy().astype(int) - cpu.frames).max() <= 1
            assert np.array_equal(device.frame_indices, cpu.frame_indices) and device.warnings == cpu.warnings
    assert sum(r.error is not None for r in on_device) == 3


@needs_torchcodec
def test_extract_with_the_device_decoder_end_to_end(video_tree, tmp_path, cpu_as_device):
    reference = extract(video_tree, tmp_path / "decord", **TINY)
    report = extract(video_tree, tmp_path / "device", **{**TINY, "decoder": "torchcodec-cuda", "batch_size": 5})
    assert report.videos == GOOD_VIDEOS and report.manifest.decoder == "torchcodec-cuda"
    assert sorted(f.reason for f in report.failures) == sorted(f.reason for f in reference.failures)
    with open_shards(tmp_path / "decord") as a, open_shards(tmp_path / "device") as b:
        assert a.videos.tolist() == b.videos.tolist()  # the same order: results come back in task order
        # frames one level apart at most (see above) give tokens of this random ViT within a small fraction of a unit
        difference = np.abs(a.read_tokens(np.arange(len(a))).astype(np.float32) - b.read_tokens(np.arange(len(b))))
        assert difference.max() < 0.5
