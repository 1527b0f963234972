"""Extraction through the Python API: shapes, labels, failures, resume, settings checks, exact tokens."""

import json
import re
import subprocess
import sys
from collections import deque

import numpy as np
import pytest
import timm
import torch
from conftest import BAD_VIDEOS, GOOD_VIDEOS, TINY
from safetensors.torch import save_file

from step_cache import extract, open_shards
from step_cache.catalog import VideoItem, write_annotations
from step_cache.extraction.backbones import load_backbone
from step_cache.extraction.decode_pool import DecodePool, DecodeTask
from step_cache.extraction.engine import ExtractionError
from step_cache.extraction.preprocess import Preprocessing
from step_cache.extraction.video import decode_clips


def test_extracts_good_videos_and_records_bad_ones(video_tree, tmp_path):
    out = tmp_path / "shards"
    report = extract(video_tree, out, **TINY)
    assert report.videos == GOOD_VIDEOS and report.skipped == 0
    assert {f.video for f in report.failures} == BAD_VIDEOS
    reasons = {f.video: f.reason for f in report.manifest.failures}
    assert "empty file (0 bytes)" in reasons["slide_right/empty.mp4"]
    assert "not a readable video" in reasons["blink/notes.mp4"]
    assert str(video_tree / "slide_left/truncated.mp4") in reasons["slide_left/truncated.mp4"]

    shards = open_shards(out)
    assert len(shards) == GOOD_VIDEOS and shards.clip_shape == (4, 5, 192)
    assert shards.classes == ["blink", "slide_left", "slide_right"]
    for video, label in zip(shards.videos, shards.labels, strict=True):
        assert shards.classes[label] == video.split("/")[0]
    blink = list(shards.videos).index("blink/blink_0.mp4")
    assert shards.short[blink] and shards.num_frames[blink] == 3
    assert shards.frame_indices[blink].tolist() == [0, 1, 1, 2]  # 3 frames, 4 segments of 0.75
    tokens = shards.read_tokens(range(len(shards)))
    assert tokens.dtype == np.float16 and np.isfinite(tokens).all()


def test_manifest_records_everything_needed_to_reproduce(video_tree, tmp_path):
    extract(video_tree, tmp_path / "s", **TINY)
    data = json.loads((tmp_path / "s" / "manifest.json").read_text())
    ex = data["extraction"]
    assert ex["backbone"]["timm_model"] == "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert ex["weights"] == {"source": "random", "seed": 0, "pos_embed": "sincos-2d"}
    assert ex["sampling"] == {"frames": 4, "clips": 1, "strategy": "segment-centres"}
    assert ex["preprocessing"]["crop"] == 32 and ex["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert ex["tokens"] == {
        "cls_tokens": 1,
        "grid": [2, 2],
        "dim": 192,
        "dtype": "float16",
        "registers_dropped": 0,
        "patch_pool": 1,
        "tokens_per_frame": 5,
    }
    assert data["num_videos"] == GOOD_VIDEOS and len(data["failures"]) == len(BAD_VIDEOS)


def test_rerun_resumes_and_skips_done_videos(video_tree, tmp_path):
    out = tmp_path / "s"
    first = extract(video_tree, out, **TINY, shard_size_mb=0.02)  # a few clips per shard
    assert len(first.manifest.shards) > 2
    again = extract(video_tree, out, **TINY, shard_size_mb=0.02)
    assert again.videos == 0 and again.skipped == GOOD_VIDEOS
    # New videos appear: only they are extracted, into new shards.
    (video_tree / "slide_left" / "copy.mp4").write_bytes((video_tree / "slide_left" / "slide_left_1.mp4").read_bytes())
    third = extract(video_tree, out, **TINY, shard_size_mb=0.02)
    assert third.videos == 1
    videos = list(open_shards(out).videos)
    assert len(videos) == len(set(videos)) == GOOD_VIDEOS + 1


def test_different_settings_are_refused_until_overwrite(video_tree, tmp_path):
    out = tmp_path / "s"
    extract(video_tree, out, **TINY)
    with pytest.raises(ExtractionError, match=r"other settings \(sampling.frames: 4 != 8\).*overwrite=True"):
        extract(video_tree, out, **{**TINY, "frames": 8})
    with pytest.raises(ExtractionError, match=r"weights.seed: 0 != 1"):
        extract(video_tree, out, **{**TINY, "seed": 1})
    report = extract(video_tree, out, **{**TINY, "frames": 8}, overwrite=True)
    assert report.videos == GOOD_VIDEOS and open_shards(out).clip_shape[0] == 8


def test_a_cache_of_another_videos_root_is_refused_until_overwrite(video_tree, tmp_path):
    """Keys are paths relative to the videos root: the same names under another root are other videos, so neither
    the finished-cache shortcut nor a resume may take them for the cached ones (or rewrite source.videos)."""
    import shutil

    other = tmp_path / "other_videos"
    shutil.copytree(video_tree, other)
    finished, partial = tmp_path / "finished", tmp_path / "partial"
    first = [VideoItem(f"slide_left/slide_left_{i}.mp4", "slide_left") for i in range(2)]
    extract(video_tree, finished, items=first, **TINY)  # holds every item: a re-run would have nothing to do
    extract(video_tree, partial, items=first[:1], **TINY)
    for out in (finished, partial):
        with pytest.raises(
            ExtractionError,
            match=rf"{out} holds videos extracted from {video_tree}, not from {other}: .*use another out=, or "
            "overwrite=True",
        ):
            extract(other, out, items=first, **TINY)
        assert json.loads((out / "manifest.json").read_text())["source"]["videos"] == str(video_tree)
    report = extract(other, finished, items=first, **TINY, overwrite=True)
    assert report.videos == 2 and report.manifest.source["videos"] == str(other)


def test_strict_stops_at_first_failure_and_keeps_work(video_tree, tmp_path):
    with pytest.raises(ExtractionError, match=r"first failed video \(strict=True\)"):
        extract(video_tree, tmp_path / "s", **TINY, strict=True)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert len(manifest["failures"]) == 1


def test_annotations_with_splits_segments_and_pairs(video_tree, tmp_path):
    items = [
        VideoItem("slide_left/slide_left_0.mp4", "left", "train"),
        VideoItem("slide_left/slide_left_1.mp4", "left", "val", start_frame=4, end_frame=12),
        VideoItem("slide_right/slide_right_0.mp4", "right", "train"),
        VideoItem("slide_right/slide_right_1.mp4", None, "test"),
    ]
    annotations = write_annotations(tmp_path / "ann.csv", items)
    (tmp_path / "pairs.txt").write_text("left,right\n")
    report = extract(video_tree, tmp_path / "s", annotations=annotations, **TINY, clips=2)
    assert report.manifest.pairs == [("left", "right")]
    shards = open_shards(tmp_path / "s")
    assert len(shards) == 8 and shards.classes == ["left", "right"]
    rows = {(v, c): i for i, (v, c) in enumerate(zip(shards.videos, shards.clip_index, strict=True))}
    segment = rows[("slide_left/slide_left_1.mp4#4-12", 0)]
    assert shards.splits[segment] == "val" and shards.num_frames[segment] == 8
    assert shards.frame_indices[segment].min() >= 4 and shards.frame_indices[segment].max() < 12
    assert shards.labels[rows[("slide_right/slide_right_1.mp4", 1)]] == -1
    a, b = (
        shards.frame_indices[rows[("slide_left/slide_left_0.mp4", 0)]],
        shards.frame_indices[rows[("slide_left/slide_left_0.mp4", 1)]],
    )
    assert (a < b).all()  # the two views interleave


def test_local_weights_give_the_models_own_tokens(video_tree, tmp_path):
    torch.manual_seed(5)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32).eval()
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    out = tmp_path / "s"
    options = {**TINY, "weights": str(weights)}
    report = extract(video_tree / "slide_right", out, **options)
    assert report.manifest.extraction["weights"]["source"] == "file"

    shards = open_shards(out)
    backbone = load_backbone("vit-tiny", weights=str(weights), image_size=32)
    for index, video in enumerate(shards.videos):
        decoded = decode_clips(video_tree / "slide_right" / video, frames=4)
        pixels = backbone.preprocessing.normalise(
            torch.from_numpy(backbone.preprocessing.resize_and_crop(decoded.frames))
        )
        with torch.inference_mode():
            features = model.forward_features(pixels)  # the model itself, not our wrapper
        stored = torch.from_numpy(shards.read_tokens([index])[0]).float()
        torch.testing.assert_close(stored, features, atol=2e-2, rtol=1e-2)  # float16 storage
        assert shards.frame_indices[index].tolist() == decoded.frame_indices[0].tolist()


def test_the_cache_is_identical_with_any_number_of_workers(video_tree, tmp_path):
    # Decoded videos are handed on in catalogue order, so batches, tokens and shard order never depend on which
    # worker finished first: a re-extraction reproduces the cache bit for bit.
    extract(video_tree, tmp_path / "a", **TINY)
    extract(video_tree, tmp_path / "b", **{**TINY, "workers": 2, "batch_size": 3})
    extract(video_tree, tmp_path / "c", **{**TINY, "workers": 2, "batch_size": 3})
    a, b, c = (open_shards(tmp_path / name) for name in "abc")
    assert list(a.videos) == list(b.videos) == list(c.videos)
    np.testing.assert_array_equal(b.read_tokens(range(len(b))), c.read_tokens(range(len(c))))
    # Another frame batch size sums in another order: float32 tokens that differ by rounding can land on
    # neighbouring float16 values, one float16 step apart (2^-10 relative; 2^-14 absolute near zero).
    np.testing.assert_allclose(a.read_tokens(range(len(a))), b.read_tokens(range(len(b))), rtol=2**-10, atol=2**-14)


def test_decoder_crash_is_recorded_and_run_goes_on(video_tree, tmp_path, monkeypatch):
    # A worker process that dies (as with a segfault in FFmpeg) must cost only its video.
    monkeypatch.setenv("STEP_CACHE_TEST_CRASH_ON", "slide_left_2.mp4")
    report = extract(video_tree, tmp_path / "s", **{**TINY, "workers": 1})
    crashed = [f for f in report.failures if f.video == "slide_left/slide_left_2.mp4"]
    assert crashed and "decoder crashed" in crashed[0].reason
    assert report.videos == GOOD_VIDEOS - 1


def test_a_result_sent_just_before_a_crash_is_kept(video_tree, monkeypatch):
    # The worker decodes video 0, sends it, and dies on video 1 before the pool reads the pipe: video 0 must count
    # as decoded, only video 1 fails, and video 2 goes back to the front of the queue.
    monkeypatch.setenv("STEP_CACHE_TEST_CRASH_ON", "slide_left_2.mp4")
    names = ["slide_left/slide_left_0.mp4", "slide_left/slide_left_2.mp4", "slide_left/slide_left_1.mp4"]
    tasks = [DecodeTask(index, str(video_tree / name), None, None) for index, name in enumerate(names)]
    pool = DecodePool(workers=1, frames=4, clips=1, prefetch=3)
    pool.preprocessing = Preprocessing(32, 32, "bilinear", (0.5,) * 3, (0.5,) * 3)
    pool._rank = {task.task_id: task.task_id for task in tasks}
    try:
        pool.start()
        worker = pool._workers[0]
        worker.tasks.put(pool.preprocessing)
        pending = deque(tasks)
        pool._dispatch(pending)
        worker.process.join(timeout=60)
        assert not worker.process.is_alive()
        results = pool._check_workers(pending, {task.task_id: task for task in tasks})
    finally:
        pool.close()
    assert [result.task_id for result in results] == [0, 1]
    assert results[0].error is None and results[0].frames.shape == (4, 3, 32, 32)
    assert "decoder crashed" in results[1].error and names[1] in results[1].error
    assert [task.task_id for task in pending] == [2]


def test_an_unguarded_script_stops_with_one_clear_error(video_tree, tmp_path):
    # Spawned decode workers import the caller's script; without a __main__ guard each one dies at start-up. That
    # must stop the run with advice, not record every video as a decoder crash.
    script = tmp_path / "unguarded.py"
    options = {**TINY, "workers": 1}
    script.write_text(
        f"import step_cache\nstep_cache.extract({str(video_tree)!r}, {str(tmp_path / 's')!r}, **{options!r})\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "exited (code 1) before decoding any video" in run.stderr and "__main__" in run.stderr
    assert "decoder crashed" not in run.stderr


def test_annotation_paths_are_relative_to_the_csv_folder_by_default(video_tree, tmp_path):
    annotations = write_annotations(video_tree / "ann.csv", [VideoItem("slide_left/slide_left_0.mp4", "left")])
    report = extract(None, tmp_path / "s", annotations=annotations, **TINY)
    assert report.videos == 1 and not report.failures


def test_a_run_that_extracts_nothing_fails(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "v" / "c").mkdir(parents=True, exist_ok=True)
        (tmp_path / "v" / "c" / name).write_text("not a video")
    with pytest.raises(ExtractionError, match=r"none of the 2 videos could be extracted \(first: .*c/a.mp4"):
        extract(tmp_path / "v", tmp_path / "s", **TINY)


def test_hub_weights_identity_is_the_same_on_first_download_and_from_the_cache(tmp_path, monkeypatch):
    import step_cache.extraction.backbones as backbones

    downloaded = tmp_path / "model.safetensors"
    real_create = timm.create_model

    def fake_create(name, pretrained=False, **kwargs):  # the "download" lands in the hub cache
        model = real_create(name, pretrained=False, **kwargs)
        if pretrained and not downloaded.exists():
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, downloaded)
        return model

    monkeypatch.setattr(backbones, "_require_network", lambda *args: None)
    monkeypatch.setattr(timm, "create_model", fake_create)
    monkeypatch.setattr(backbones, "_hub_cache_file", lambda repo: downloaded if downloaded.exists() else None)
    first = load_backbone("vit-tiny", weights="hub", image_size=32).weights
    second = load_backbone("vit-tiny", weights="hub", image_size=32).weights
    assert first == second and first["source"] == "hub" and len(first["sha256"]) == 64


def test_decoding_less_than_asked_for_is_reported(tmp_path):
    from step_cache.synthetic.videos import moving_square, write_video

    full = write_video(tmp_path / "full.mkv", moving_square(num_frames=40, direction=1, seed=3))
    assert decode_clips(full, 4).warnings == []
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    decoded = decode_clips(cut, 4)  # decord indexes only what is left: no error, fewer frames
    assert decoded.num_frames < 30 and not decoded.short
    assert decoded.warnings == [
        f"truncated: {decoded.num_frames} of the 40 frames the container declares could be decoded; "
        f"frames were sampled from those {decoded.num_frames}"
    ]
    clamped = decode_clips(full, 4, start_frame=30, end_frame=50)
    assert clamped.num_frames == 10 and clamped.frame_indices.max() < 40
    assert clamped.warnings == ["segment [30, 50) ends past the video's 40 frames; frames were sampled from [30, 40)"]


def test_an_exact_frame_count_allows_two_missing_frames_an_estimate_five_percent(tmp_path, monkeypatch):
    """An .mp4 states its frame count: more than 2 frames missing is a truncation (4 of 100 was let through by the 5 %
    allowance). An .mkv's count is estimated from its duration: 5 % stays allowed there."""
    from step_cache.extraction import video
    from step_cache.synthetic.videos import moving_square, write_video

    class Fewer:  # a decoder that indexes only the first `frames` frames, as decord does with a cut-short file
        def __init__(self, source, frames):
            self.source, self.num_frames, self.fps = source, frames, source.fps

        def read(self, indices):
            return self.source.read(indices)

        def close(self):
            self.source.close()

    def decoding(path, frames):
        open_source = video._open_source
        with monkeypatch.context() as patch:
            patch.setattr(video, "_open_source", lambda p, decoder: Fewer(open_source(p, decoder), frames))
            return decode_clips(path, 4).warnings

    for suffix, exact in ((".mp4", True), (".mkv", False)):
        path = write_video(tmp_path / f"v{suffix}", moving_square(num_frames=100, direction=1, seed=3))
        assert decoding(path, 98) == []  # 2 missing: a decoder's rounding, either way
        warnings = decoding(path, 96)
        assert warnings == [] if not exact else warnings[0].startswith("truncated: 96 of the 100 frames"), suffix
        assert decoding(path, 90)[0].startswith("truncated: 90 of the 100 frames"), suffix


def test_decoder_errors_are_one_readable_line(video_tree):
    from step_cache.extraction.video import VideoDecodeError, _decoder_message

    with pytest.raises(VideoDecodeError) as info:  # decord itself only says "Error reading FILE..."
        decode_clips(video_tree / "slide_left" / "truncated.mp4", 4)
    # the project's wording; FFmpeg's reason inside the parentheses differs between FFmpeg versions
    pattern = re.escape(f"{video_tree / 'slide_left' / 'truncated.mp4'}: not a readable video (") + r"[^\n]+\)"
    assert re.fullmatch(pattern, str(info.value)), str(info.value)
    raw = (
        "[08:41:41] /github/workspace/src/video/ffmpeg/threaded_decoder.cc:292: [08:41:41] /github/workspace/src/"
        "video/ffmpeg/threaded_decoder.cc:218: Check failed: avcodec_send_packet(dec_ctx_.get(), pkt.get()) >= 0 "
        "(-1094995529 vs. 0) Thread worker: Error sending packet."
    )  # decord's text when a damaged mp4 fails mid-decode: FFmpeg's AVERROR_INVALIDDATA, worded as PyAV words it
    assert _decoder_message(RuntimeError(raw)) == "invalid data found when processing input"
    assert _decoder_message(RuntimeError(raw.replace("-1094995529", "-11"))) == "error sending packet"


@pytest.fixture
def read_only(monkeypatch):
    """read_only(directory): writing under it fails as it would for a user without write permission. Simulated,
    because the tests may run as root, whom chmod does not stop."""
    import builtins
    import errno
    import os

    blocked: list[str] = []

    def under(path) -> bool:
        return any(os.path.abspath(os.fspath(path)).startswith(b) for b in blocked)

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    real_open, real_mkdir, real_builtin_open, real_access = os.open, os.mkdir, builtins.open, os.access

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if under(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def builtin_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and under(file):
            refuse(file)
        return real_builtin_open(file, mode, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        return False if mode & os.W_OK and under(path) else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(builtins, "open", builtin_open)
    monkeypatch.setattr(os, "access", access)
    return lambda directory: blocked.append(os.path.abspath(directory))


def test_a_finished_extract_reruns_in_a_read_only_folder(video_tree, tmp_path, read_only):
    good = [
        VideoItem(str(path.relative_to(video_tree)), path.parent.name)
        for path in sorted(video_tree.glob("*/*.mp4"))
        if str(path.relative_to(video_tree)) not in BAD_VIDEOS
    ]
    complete, with_failures = tmp_path / "complete", tmp_path / "with_failures"
    extract(video_tree, complete, items=good, **TINY)
    extract(video_tree, with_failures, **TINY)
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    read_only(tmp_path)

    report = extract(video_tree, complete, items=good, **TINY)  # nothing to do: no lock, nothing written
    assert (report.videos, report.skipped) == (0, GOOD_VIDEOS)
    report = extract(video_tree, with_failures, **TINY)  # failed videos cannot be retried here: said, not fatal
    assert (report.videos, report.skipped) == (0, GOOD_VIDEOS)
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == before

    from step_cache.cache.locking import NotWritableError

    with pytest.raises(NotWritableError, match=r"/new: cannot write here \(Permission denied\); choose a writable"):
        extract(video_tree, tmp_path / "new", **TINY)
    with pytest.raises(NotWritableError, match="cannot write here"):  # videos the cache lacks: there is work to do
        extract(video_tree, complete, **TINY)
    # Other settings are refused before anything else (quick_check: before the backbone, before the lock).
    with pytest.raises(ExtractionError, match=r"other settings \(sampling.frames: 4 != 2\)"):
        extract(video_tree, complete, items=good, **{**TINY, "frames": 2})


def test_an_audio_track_longer_than_the_video_is_not_a_truncation(tmp_path):
    import av

    path = tmp_path / "with_audio.mkv"
    with av.open(str(path), "w") as container:  # 20 video frames (0.8 s at 25 fps), 2 s of audio
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=16000)
        audio.layout = "mono"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 32000), np.int16), format="s16", layout="mono")
        sound.sample_rate, sound.pts = 16000, 0
        for packet in [*audio.encode(sound), *audio.encode()]:
            container.mux(packet)
    decoded = decode_clips(path, 4)
    assert decoded.num_frames == 20 and decoded.warnings == []  # the file lasts 2 s; its video stream 0.8 s
