"""``extract --test-views SxC`` and ``--frame-step S``: V-JEPA's evaluation views and frame sampling, checked against
references written here from the anchors' published arithmetic (``evals/video_classification_frozen/utils.py``
``EvalVideoTransform``, ``src/datasets/video_dataset.py`` ``loadvideo_decord``), and their storage (format 5)."""

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from step_cache.cache.manifest import FORMAT_VERSION, TEST_VIEWS_FORMAT_VERSION, read_manifest
from step_cache.cache.shards import open_shards
from step_cache.cache.summary import format_summary, summarize_cache
from step_cache.cache.verify import verify_cache
from step_cache.extraction.backbones import load_backbone
from step_cache.extraction.decode_pool import DecodeTask, decode_task
from step_cache.extraction.decoders import open_video
from step_cache.extraction.engine import ExtractionError, ExtractOptions, extract
from step_cache.extraction.sampling import frame_step_indices
from step_cache.extraction.test_views import (
    TestViewError,
    TestViews,
    crop_starts,
    render_crops,
    resize_linear,
    short_side_size,
)
from step_cache.synthetic.videos import moving_square, write_video
from step_cache.training.evaluation import load_probe


# -- references from the anchors' published code (their arithmetic, written out; never imported) ----------------
def anchor_indices(num_frames, fpc, fstp, num_clips, end_of_window):
    """loadvideo_decord with allow_clip_overlap=True; ``end_of_window(partition)`` stands for the random draw."""
    clip_len, partition_len, out = fpc * fstp, num_frames // num_clips, []
    for i in range(num_clips):
        if partition_len > clip_len:
            end_indx = end_of_window(clip_len, partition_len)
            start_indx = end_indx - clip_len
            indices = np.linspace(start_indx, end_indx, num=fpc)
            indices = np.clip(indices, start_indx, end_indx - 1).astype(np.int64) + i * partition_len
        else:
            sample_len = min(clip_len, num_frames) - 1
            indices = np.linspace(0, sample_len, num=sample_len // fstp)
            indices = np.concatenate((indices, np.ones(fpc - sample_len // fstp) * sample_len))
            indices = np.clip(indices, 0, sample_len - 1).astype(np.int64)
            clip_step = (num_frames - clip_len) // (num_clips - 1) if num_frames > clip_len else 0
            indices = indices + i * clip_step
        out.append(indices)
    return np.stack(out)


def anchor_views(frames, side, views):
    """EvalVideoTransform: Resize(short side = side; cv2 INTER_LINEAR = half-pixel bilinear without antialiasing,
    computed here in float64 with torch), then ``views`` crops along the long side at i * (long - side) // (views-1)."""
    _, h, w, _ = frames.shape
    new_h, new_w = (int(side * h / w), side) if w < h else (side, int(side * w / h))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).double()
    resized = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
    resized = resized.permute(0, 2, 3, 1).numpy()
    step = (max(new_h, new_w) - side) // (views - 1)
    crops = []
    for i in range(views):
        start = i * step
        view = resized[:, start : start + side] if new_h > new_w else resized[:, :, start : start + side]
        crops.append(view.transpose(0, 3, 1, 2))  # (T, 3, side, side)
    return crops


# -- frame-step sampling ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "num_frames,frames,step,clips",
    [(300, 16, 4, 2), (300, 16, 4, 8), (64, 16, 4, 1), (65, 16, 4, 1), (100, 16, 4, 2), (40, 16, 4, 3),
     (30, 8, 2, 1), (7, 4, 3, 2), (1, 4, 2, 1), (200, 8, 1, 3)],
)  # fmt: skip
def test_frame_step_indices_follow_the_anchor_rule(num_frames, frames, step, clips):
    middle = lambda clip_len, partition_len: (clip_len + partition_len - 1) // 2  # noqa: E731 - the draw's mean
    expected = anchor_indices(num_frames, frames, step, clips, middle)
    expected = np.maximum(expected, 0)  # a one-frame video: the anchor would index -1, we take frame 0
    got = frame_step_indices(num_frames, frames, step, clips, start=10)
    np.testing.assert_array_equal(got, expected + 10)
    assert got.shape == (clips, frames) and got.min() >= 10 and got.max() < 10 + num_frames


def test_frame_step_window_is_the_middle_of_the_anchor_draw():
    # 300 frames, 2 segments of 150, window 64: the anchor's end is drawn from [64, 150); its mean 106.5 -> 106
    got = frame_step_indices(300, 16, 4, clips=2)
    assert got[0, 0] == 106 - 64 and got[1, 0] == 150 + 106 - 64
    assert set(np.diff(got[0])) <= {4, 5}  # linspace over 64 frames in 16 points: steps of 64/15, floored


# -- the eval transform ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("height,width", [(48, 64), (64, 40), (32, 32), (45, 80)])
def test_crops_equal_the_anchor_eval_transform(height, width):
    rng = np.random.default_rng(height * width)
    frames = rng.integers(0, 256, (3, height, width, 3), dtype=np.uint8)  # noise: a shifted crop differs everywhere
    side, crops = 24, 3
    ours = render_crops(frames, side, crops)
    reference = anchor_views(frames, side, crops)
    assert ours.shape == (crops, 3, 3, side, side)
    for view in range(crops):
        # OpenCV's 11-bit coefficients are within 2^-12 of the exact weights: per pass at most 255 * 2^-11 away,
        # so after rounding the pixel is the exact value's rounding or one grey level beside it
        difference = np.abs(ours[view].astype(np.float64) - reference[view])
        assert difference.max() <= 0.5 + 2 * 255 / 2**11
    new_h, new_w = short_side_size(height, width, side)
    starts = crop_starts(new_h, new_w, side, crops)
    step = (max(new_h, new_w) - side) // (crops - 1)
    along = 0 if new_h > new_w else 1  # crops move along the long side only
    assert [s[along] for s in starts] == [0, step, 2 * step] and all(s[1 - along] == 0 for s in starts)


def test_resize_matches_bilinear_sampling_and_keeps_a_frame_of_the_target_size():
    frames = np.random.default_rng(0).integers(0, 256, (2, 30, 50, 3), dtype=np.uint8)
    assert resize_linear(frames, 30, 50) is frames  # the anchor returns the clip unchanged then
    up = resize_linear(frames, 61, 97).astype(np.float64)
    exact = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).double(), size=(61, 97), mode="bilinear",
                          align_corners=False).permute(0, 2, 3, 1).numpy()  # fmt: skip
    assert np.abs(up - exact).max() <= 0.5 + 2 * 255 / 2**11


def test_test_view_spec_parsing_and_refusals():
    assert TestViews.parse("8x3") == TestViews(8, 3) and TestViews.parse("2×3").rows == 6
    assert TestViews.parse((2, 3)).to_dict() == {"segments": 2, "crops": 3}
    for bad in ("3", "2x", "0x3", "axb"):
        with pytest.raises(TestViewError, match=r"^test_views= "):
            TestViews.parse(bad)
    with pytest.raises(ExtractionError, match="frame_step=0 must be >= 1"):
        ExtractOptions(frame_step=0)


def test_decoded_views_are_the_anchor_crops_of_the_anchor_frames(tmp_path):
    """The backbone input of each view of a val video: segment s's frames (frame-step windows) cropped as the
    anchor crops them, in shard-row order (segment, then crop)."""
    from step_cache.extraction.preprocess import Preprocessing

    path = write_video(tmp_path / "v.mp4", moving_square(num_frames=40, size=(48, 64), direction=1, seed=3))
    preprocessing = Preprocessing(16, 18, "bicubic", (0.5,) * 3, (0.5,) * 3)
    task = DecodeTask(0, str(path), None, None, key="v.mp4", segments=2, crops=3, frame_step=2)
    result = decode_task(task, 4, 1, preprocessing)
    assert result.error is None and result.frames.shape == (2 * 3 * 4, 3, 16, 16) and result.crops == 3
    np.testing.assert_array_equal(result.frame_indices, frame_step_indices(40, 4, 2, 2))
    source = open_video(path, "decord")
    try:
        for s in range(2):
            frames = source.read(result.frame_indices[s].tolist())
            reference = anchor_views(frames, 16, 3)
            for c in range(3):
                row = (s * 3 + c) * 4
                got = result.frames[row : row + 4].astype(np.float64)
                assert np.abs(got - reference[c]).max() <= 0.5 + 2 * 255 / 2**11
    finally:
        source.close()


# -- storage ----------------------------------------------------------------------------------------------------
def _catalogue(root):
    rows = ["path,label,split"]
    for i, split in enumerate(("train", "train", "val", "test")):
        for name, direction in (("left", -1), ("right", 1)):
            write_video(
                root / f"{name}{i}.mp4", moving_square(num_frames=30, size=(48, 64), direction=direction, seed=i)
            )
            rows.append(f"{name}{i}.mp4,{name},{split}")
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    return root / "list.csv"


TINY = {"backbone": "vit-tiny", "weights": "random", "frames": 4, "image_size": 32, "workers": 0, "progress": False}


def test_extract_test_views_2x3_stores_six_views_per_val_test_video(tmp_path):
    annotations = _catalogue(tmp_path)
    out = tmp_path / "cache"
    report = extract(tmp_path, out, annotations=annotations, test_views="2x3", frame_step=2, **TINY)
    assert report.clips == 4 * 1 + 4 * 6 and report.view_clips == 0
    manifest = read_manifest(out)
    assert manifest.format_version == TEST_VIEWS_FORMAT_VERSION == FORMAT_VERSION == 5
    assert manifest.extraction["test_views"] == {"segments": 2, "crops": 3}
    assert manifest.extraction["sampling"] == {"frames": 4, "clips": 1, "strategy": "frame-step", "frame_step": 2}
    shards = open_shards(out)
    for video in np.unique(shards.videos):
        rows = np.nonzero(shards.videos == video)[0]
        split = shards.splits[rows[0]]
        if split == "train":
            assert len(rows) == 1 and shards.crops[rows[0]] == 0
            np.testing.assert_array_equal(shards.frame_indices[rows[0]], frame_step_indices(30, 4, 2, 1)[0])
            continue
        assert len(rows) == 6
        assert shards.clip_index[rows].tolist() == [0, 0, 0, 1, 1, 1] and shards.crops[rows].tolist() == [0, 1, 2] * 2
        np.testing.assert_array_equal(shards.frame_indices[rows[::3]], frame_step_indices(30, 4, 2, 2))
    with h5py.File(out / manifest.shards[0].file, "r") as handle:
        assert handle.attrs["format_version"] == 5 and handle["crop"].dtype == np.int32
    assert verify_cache(out).ok
    shown = format_summary(summarize_cache(out))  # inspect
    assert (
        "4 frames 2 apart x 1 clip(s) per video (val/test: 2 segments x 3 crops)" in shown
        and "(shard format v5)" in shown
    )

    # the stored tokens of row (segment, crop) are the backbone's tokens of that view's pixels
    backbone = load_backbone("vit-tiny", "random", 32, seed=0)
    video = "left2.mp4"
    rows = np.nonzero(shards.videos == video)[0]
    task = DecodeTask(0, str(tmp_path / video), None, None, key=video, segments=2, crops=3, frame_step=2)
    pixels = decode_task(task, 4, 1, backbone.preprocessing).frames
    with torch.inference_mode():
        tokens = backbone.forward_tokens(backbone.preprocessing.normalise(torch.from_numpy(pixels)))
    expected = tokens.reshape(6, 4, *tokens.shape[1:]).numpy()
    stored = shards.read_tokens(rows).astype(np.float32)
    # float16 storage: each value within half an ulp of float16 (2^-11 relative) of the float32 tokens
    np.testing.assert_allclose(stored, expected, rtol=2**-11, atol=2**-24)
    assert not np.allclose(stored[0], stored[1])  # the crops differ

    # compact carries the test views: the same rows, crops and version
    from step_cache.cache.compact import compact

    compact(out, tmp_path / "int8", dtype="int8", progress=False)
    small = open_shards(tmp_path / "int8")
    assert small.manifest.format_version == 5 and verify_cache(tmp_path / "int8").ok
    for key in ("videos", "clip_index", "crops", "splits"):
        np.testing.assert_array_equal(getattr(small, key), getattr(shards, key), err_msg=key)

    # a probe trained on it scores each test video by the mean softmax of its 6 views
    import csv

    from step_cache.training.evaluation import predict
    from step_cache.training.trainer import train_probe

    run = tmp_path / "run"
    train_probe(out, "attentive", run, epochs=1, batch_size=4, progress=False)
    rows = {r["video"]: r for r in csv.DictReader(predict(run, out, tmp_path / "p.csv", top_k=2).open())}
    probe = load_probe(run)[1].eval()
    for video in ("left3.mp4", "right3.mp4"):  # the test split
        views = np.nonzero(shards.videos == video)[0]
        with torch.no_grad():
            logits = probe(torch.from_numpy(shards.read_tokens(views).astype(np.float32))).double()
        expected = torch.softmax(logits, dim=1).mean(dim=0).numpy()
        assert rows[video]["clips"] == "6"
        for k in (1, 2):
            c = ["left", "right"].index(rows[video][f"class_{k}"])
            assert abs(float(rows[video][f"prob_{k}"]) - expected[c]) <= 5e-7 + 1e-6  # 6 printed decimals; float32


def test_a_cache_without_test_views_keeps_its_version_and_reads_crop_zero(tmp_path):
    annotations = _catalogue(tmp_path)
    extract(tmp_path, tmp_path / "plain", annotations=annotations, **TINY)
    manifest = read_manifest(tmp_path / "plain")
    assert manifest.format_version == 1 and "test_views" not in manifest.extraction
    assert manifest.extraction["sampling"]["strategy"] == "segment-centres"
    with h5py.File(tmp_path / "plain" / manifest.shards[0].file, "r") as handle:
        assert "crop" not in handle and handle.attrs["format_version"] == 1
    shards = open_shards(tmp_path / "plain")
    assert shards.crops.tolist() == [0] * 8


def test_a_resume_with_other_test_views_is_refused(tmp_path):
    annotations = _catalogue(tmp_path)
    extract(tmp_path, tmp_path / "c", annotations=annotations, test_views="2x3", **TINY)
    with pytest.raises(ExtractionError, match="test_views"):
        extract(tmp_path, tmp_path / "c", annotations=annotations, test_views="2x2", **TINY)
    with pytest.raises(ExtractionError, match="sampling"):
        extract(tmp_path, tmp_path / "c", annotations=annotations, test_views="2x3", frame_step=2, **TINY)
    stored = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert stored["extraction"]["test_views"] == {"segments": 2, "crops": 3}


def test_a_frame_step_run_is_rebuilt_by_predict_videos_and_timeline():
    from step_cache.recognition.settings import check_rebuildable

    extraction = {"backbone": {"name": "vit-tiny"}, "preprocessing": {"crop": 32}, "tokens": {},
                  "sampling": {"frames": 4, "clips": 1, "strategy": "frame-step", "frame_step": 4}}  # fmt: skip
    check_rebuildable(extraction)  # predict --videos extracts with the run's frame step
    check_rebuildable(extraction, streaming=True)  # timeline's windows sample as extract did (test_timeline.py)


def test_the_command_line_extracts_test_views_and_refuses_a_bad_spec(tmp_path):
    from conftest import TINY_CLI
    from test_cli_extract import run_cli

    annotations = _catalogue(tmp_path)
    out = tmp_path / "cli"
    common = ["extract", "--annotations", annotations, "--out", out, *TINY_CLI, "--workers", "0"]
    bad = run_cli(*common, "--test-views", "2by3")
    assert bad.returncode != 0 and "--test-views takes SEGMENTSxCROPS such as 2x3 or 8x3, got '2by3'" in bad.stderr
    assert "Traceback" not in bad.stderr and not out.exists()  # refused before anything was written
    run_cli(*common, "--test-views", "2x3", "--frame-step", "2", check=True)
    manifest = read_manifest(out)
    assert manifest.extraction["test_views"] == {"segments": 2, "crops": 3}
    assert manifest.extraction["sampling"]["frame_step"] == 2 and manifest.num_clips == 4 + 4 * 6


def test_test_views_with_several_layers_in_int8_are_the_float_layers_quantized(tmp_path):
    """Format 5's two additions together: every test-view row of a last2 cache holds both layers, and the int8
    copy (quantized where the backbone ran) is the float32 tokens within half a quantisation step."""
    annotations = _catalogue(tmp_path)
    common = {**TINY, "annotations": annotations, "test_views": "2x3", "layers": "last2"}
    extract(tmp_path, tmp_path / "f32", dtype="float32", **common)
    extract(tmp_path, tmp_path / "i8", dtype="int8", **common)
    exact, small = open_shards(tmp_path / "f32"), open_shards(tmp_path / "i8")
    assert exact.layout.layers == small.layout.layers == (10, 11)
    assert verify_cache(tmp_path / "i8").ok
    np.testing.assert_array_equal(small.crops, exact.crops)
    rows = np.nonzero(exact.splits == "test")[0]
    assert len(rows) == 2 * 6
    values, scales = small.read_stored(rows)
    assert values.shape == (12, 2, 4, *exact.clip_shape[1:]) and scales.shape == values.shape[:-1]
    reference = exact.read_tokens(rows)
    # int8 quantizes the float16 tokens (the storage dtype the backbone's output is cast to first): |x - q s| <= s/2
    # after that float16 rounding, which itself moves x by at most half an ulp, |x| 2^-11
    error = np.abs(small.read_tokens(rows, dtype="float32") - reference)
    assert np.all(error <= scales.astype(np.float32)[..., None] / 2 * (1 + 2**-10) + np.abs(reference) * 2**-11)
    last = open_shards(tmp_path / "f32").read_tokens(rows, layers=[1])[:, 0]
    assert not np.allclose(last, reference[:, 0])  # the two layers differ


def test_a_bad_test_views_spec_is_named_as_the_caller_wrote_it():
    from step_cache.interface import command_line

    with pytest.raises(TestViewError, match=r"^test_views= takes SEGMENTSxCROPS such as 2x3 or 8x3, got '2by3'$"):
        TestViews.parse("2by3")
    with pytest.raises(TestViewError, match=r"^test_views= needs SEGMENTS and CROPS >= 1, got 0x3$"):
        TestViews.parse((0, 3))
    with command_line(), pytest.raises(TestViewError, match=r"^--test-views takes \(segments, crops\), got \[1\]$"):
        TestViews.parse([1])
