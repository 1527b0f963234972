"""Format 5's features together, as a user combines them: a layer axis with int8, pooling and test views, then
compact, evaluate and the other commands on such a cache (faults found in the format-5 integration round)."""

from __future__ import annotations

import decord
import numpy as np
import pytest
from conftest import TINY

from step_cache import extract, open_shards
from step_cache.cache.compact import compact
from step_cache.demo_dataset import make_demo_dataset
from step_cache.recognition.settings import load_run_backbone
from step_cache.training import runs
from step_cache.training.trainer import train_probe

# 32 px / 16 px patches: a 2 x 2 grid, so pooling 2 x 2 leaves one patch token beside the CLS token
LAYERED = {**TINY, "dtype": "float32", "layers": "last2"}


def demo_run(tmp_path, probe: str, extraction: dict, **train):
    """6 make-demo videos (slide_left/right) extracted into tmp_path/cache with ``extraction``, and a one-epoch
    ``probe`` run on them in tmp_path/run; returns the videos' folder."""
    demo = tmp_path / "demo"
    make_demo_dataset(demo, per_class=3, num_frames=17, size=(64, 64), kinds=["slide"], progress=False)
    extract(demo, tmp_path / "cache", annotations=demo / "annotations.csv", **extraction)
    train_probe(tmp_path / "cache", probe, tmp_path / "run", epochs=1, batch_size=4, progress=False, **train)
    return demo


def test_compact_pools_each_layer_of_a_layered_cache(video_tree, tmp_path):
    extract(video_tree / "slide_left", tmp_path / "src", **LAYERED)
    report = compact(tmp_path / "src", tmp_path / "dst", pool_patches=2, progress=False)
    src, dst = open_shards(tmp_path / "src"), open_shards(tmp_path / "dst")
    stored = src.read_tokens(range(len(src)), np.float32)  # (n, L, T, 1 + 4, D)
    assert stored.shape[1:4] == (2, 4, 5)
    expected = np.concatenate([stored[..., :1, :], stored[..., 1:, :].mean(axis=-2, keepdims=True)], axis=-2)
    assert report.clips == len(src) and dst.layout.layers == (10, 11) and dst.layout.grid == (1, 1)
    got = dst.read_tokens(range(len(dst)), np.float32)
    assert got.shape == expected.shape == (len(src), 2, 4, 2, 192)
    # float32 in and out: the mean of four float32 values, up to its summation order
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # the CLS copy is the pooled cache's CLS tokens, as the tokens say
    np.testing.assert_array_equal(dst.read_tokens(range(len(dst)), part="cls"), got[..., :1, :])


def test_predict_from_videos_rebuilds_a_layered_cache(tmp_path):
    from step_cache.recognition.settings import extract_options
    from step_cache.recognition.videos import predict_videos
    from step_cache.training.evaluation import predict

    demo = demo_run(tmp_path, "linear", {**LAYERED, "dtype": "int8"}, layers="concat:last2")
    run = tmp_path / "run"
    assert extract_options(runs.read_config(run))["layers"] == "10,11"
    from_videos = predict_videos(run, demo, tmp_path / "videos.csv", annotations=demo / "annotations.csv")
    assert from_videos.videos == 6
    from_cache = predict(run, tmp_path / "cache", tmp_path / "cache.csv")
    with open(from_videos.csv) as a, open(from_cache) as b:
        # the same frames, backbone, layers and int8 rounding: the same numbers, written to six decimals
        assert sorted(a.read().splitlines()) == sorted(b.read().splitlines())
    # a report says which blocks each run read (runs differing only in their layers are otherwise alike)
    from step_cache.report.build import build_report

    text = build_report([run], tmp_path / "report").read_text()
    assert "batch_size=4, seed=0, seeds=1, layers=concat:last2 (blocks 10, 11); best epoch 1" in text
    # timeline and Recognizer rebuild the backbone with the run's blocks
    backbone, options = load_run_backbone(runs.read_config(run))
    assert options.layers == "10,11" and backbone.layers == (10, 11)


def test_timeline_rebuilds_the_backbone_of_a_run_on_a_test_view_cache(tmp_path):
    from step_cache.recognition.model import RunModel

    demo = demo_run(tmp_path, "linear", {**TINY, "test_views": "2x3"})
    run = tmp_path / "run"
    # test views add val/test rows only: the run's backbone is that of a run on the same cache without them (whose
    # windows' tokens the timeline tests check against the cache), so the same frames give the same tokens
    extract(demo, tmp_path / "plain", annotations=demo / "annotations.csv", **TINY)
    train_probe(tmp_path / "plain", "linear", tmp_path / "plain-run", epochs=1, batch_size=4, progress=False)
    frames = decord.VideoReader(str(demo / "slide_left" / "slide_left_000.mp4")).get_batch([0, 4, 8, 12]).asnumpy()
    tokens = RunModel(run, device="cpu").encode(frames)
    assert tokens.shape == (4, 5, 192)
    np.testing.assert_array_equal(tokens, RunModel(tmp_path / "plain-run", device="cpu").encode(frames))
    # predict --videos gives val/test videos (by their annotations) the cache's 2 x 3 views: the cache's answers
    from step_cache.recognition.videos import predict_videos
    from step_cache.training.evaluation import predict

    from_videos = predict_videos(run, demo, tmp_path / "videos.csv", annotations=demo / "annotations.csv")
    from_cache = predict(run, tmp_path / "cache", tmp_path / "cache.csv")
    with open(from_videos.csv) as a, open(from_cache) as b:
        rows = sorted(a.read().splitlines())
        assert rows == sorted(b.read().splitlines())
    assert sorted(row.split(",")[1] for row in rows[:-1]) == ["1"] * 2 + ["6"] * 4  # 2 train, 4 val/test videos


def test_evaluate_a_layer_run_on_a_cache_compacted_to_its_layer(tmp_path):
    from step_cache.cache.manifest import ManifestError
    from step_cache.training.evaluation import evaluate

    demo_run(tmp_path, "step", {**LAYERED, "layers": "last3"}, layers="10")
    run = tmp_path / "run"
    compact(tmp_path / "cache", tmp_path / "ten", layers="10", progress=False)
    compact(tmp_path / "cache", tmp_path / "ends", layers="9,11", progress=False)
    # block 10's tokens are the same whichever blocks are stored beside it: the same figures, to the last bit
    full, ten = evaluate(run, tmp_path / "cache", split="val"), evaluate(run, tmp_path / "ten", split="val")
    assert ten["top1"] == full["top1"] and ten["confusion_matrix"] == full["confusion_matrix"]
    assert ten["loss"] == full["loss"]
    with pytest.raises(ManifestError, match=r"ends: the run read blocks \[10\] \(layers='10'\); the cache "
                       r"stores \[9, 11\], without \[10\]$"):  # fmt: skip
        evaluate(run, tmp_path / "ends", split="val")


def test_verify_names_the_clips_whose_cls_copy_differs(video_tree, tmp_path):
    import h5py

    from step_cache.cache.verify import verify_cache

    extract(video_tree / "slide_left", tmp_path / "c", **{**LAYERED, "dtype": "int8"})
    with h5py.File(tmp_path / "c" / "shard-00000.h5", "r+") as shard:
        for row in (1, 3):
            shard["cls"][row, 1, 2, 0, 5] += 1
    problems = verify_cache(tmp_path / "c", checksums=False).problems
    assert [p.split(": ", 1)[1] for p in problems] == [
        "cls differs from the CLS tokens in tokens in 2 clip(s): rows 1, 3"
    ]


def test_last0_is_refused_without_a_made_up_model_depth(video_tree, tmp_path):
    from step_cache.errors import InputError

    with pytest.raises(InputError, match=r"^layers='last0': lastN takes N >= 1 \(the last N blocks\)$"):
        extract(video_tree / "slide_left", tmp_path / "x", layers="last0", **TINY)
    assert not (tmp_path / "x").exists()

    extract(video_tree / "slide_left", tmp_path / "c", **LAYERED)
    for spec in ("last0", "last3"):
        with pytest.raises(InputError, match=rf"^layers='{spec}': lastN takes N in 1..2; the cache stores 2 layers"):
            compact(tmp_path / "c", tmp_path / "d", layers=spec, progress=False)


def test_merging_a_layered_and_a_plain_cache_is_refused_saying_which_is_which(video_tree, tmp_path):
    from step_cache.cache.manifest import ManifestError
    from step_cache.extraction.distributed import merge

    extract(video_tree / "slide_left", tmp_path / "layered", **LAYERED)
    extract(video_tree / "slide_left", tmp_path / "plain", **{**LAYERED, "layers": "last"})
    with pytest.raises(ManifestError) as refused:
        merge(tmp_path / "m", [tmp_path / "layered", tmp_path / "plain"])
    message = str(refused.value)
    assert message.endswith(f"plain does not match {tmp_path / 'layered'}: tokens.layers: [10, 11] != None "
                            f"({tmp_path / 'layered'}'s first; None: not set)")  # fmt: skip
    assert not (tmp_path / "m" / "manifest.json").exists()
