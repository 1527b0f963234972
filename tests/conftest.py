"""Shared fixtures: small generated videos (including broken ones) and fast extraction settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import av  # noqa: F401 - before decord: decord's bundled FFmpeg, loaded first, breaks PyAV's libvpx-vp9 encoder
import pytest

from step_cache.synthetic.videos import moving_square, write_class_folders, write_video

# A random-initialised ViT-Ti/16 on 32 px frames: 2x2 patches + CLS, D=192. Seconds per test, real code paths.
TINY = {"backbone": "vit-tiny", "weights": "random", "frames": 4, "image_size": 32, "workers": 0, "progress": False}
TINY_CLI = ["--backbone", "vit-tiny", "--weights", "random", "--frames", "4", "--image-size", "32", "--quiet"]


@pytest.fixture(scope="session")
def _video_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 files: 9 good mp4s in three classes, a truncated mp4, a zero-byte mp4 and a text file named .mp4."""
    root = tmp_path_factory.mktemp("videos")
    write_class_folders(root, {"slide_left": -1, "slide_right": 1}, videos_per_class=4, num_frames=20)
    # A short video (fewer frames than some tests sample) in a third class.
    write_video(root / "blink" / "blink_0.mp4", moving_square(num_frames=3, direction=1, seed=7))
    good = root / "slide_left" / "slide_left_0.mp4"
    (root / "slide_left" / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (root / "slide_right" / "empty.mp4").write_bytes(b"")
    (root / "blink" / "notes.mp4").write_text("this is not a video\n")
    return root


@pytest.fixture
def video_tree(_video_tree: Path, tmp_path: Path) -> Path:
    """A private copy of the video tree, so a test may add or break files."""
    copy = tmp_path / "videos"
    shutil.copytree(_video_tree, copy)
    return copy


GOOD_VIDEOS = 9
BAD_VIDEOS = {"slide_left/truncated.mp4", "slide_right/empty.mp4", "blink/notes.mp4"}


def pytest_configure(config: pytest.Config) -> None:
    # Tests use tiny shapes that gain nothing from intra-op threads, and under pytest-xdist two workers with two
    # OpenMP threads each oversubscribe a 2-core machine (threads spinning against each other made a tiny
    # training step 6.7 ms -> 500 ms). One thread per test process.
    import torch

    torch.set_num_threads(1)
    # The CLI sizes torch's pool from OMP_NUM_THREADS (step_cache.cpu_budget): an in-process CliRunner call must
    # not raise this process to the machine's CPU count, which also changes float rounding for later tests.
    os.environ["OMP_NUM_THREADS"] = "1"
