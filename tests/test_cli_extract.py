"""The real `step-cache` CLI in subprocesses: end to end, error messages, exit codes, kill and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import BAD_VIDEOS, GOOD_VIDEOS, TINY_CLI

from step_cache import open_shards


def run_cli(*args, env=None, check=False):
    result = subprocess.run(
        [sys.executable, "-m", "cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def test_extract_then_inspect(video_tree, tmp_path):
    out = tmp_path / "shards"
    result = run_cli("extract", "--videos", video_tree, "--out", out, *TINY_CLI, "--workers", "1", check=True)
    assert f"extracted {GOOD_VIDEOS} videos ({GOOD_VIDEOS} clips)" in result.stdout
    assert "3 failed" in result.stdout
    for bad in BAD_VIDEOS:
        assert bad in result.stderr  # one warning line per skipped file, naming it

    shown = run_cli("inspect", out, check=True).stdout
    assert "vit-tiny" in shown and "blink (1), slide_left (4), slide_right (4)" in shown
    assert "5 per frame (1 CLS + 2x2 patches" in shown and "failures   3" in shown
    summary = json.loads(run_cli("inspect", out, "--json", check=True).stdout)
    assert summary["clips"] == GOOD_VIDEOS and summary["short_videos"] == 1

    again = run_cli("extract", "--videos", video_tree, "--out", out, *TINY_CLI, check=True)
    assert "extracted 0 videos" in again.stdout and f"{GOOD_VIDEOS} already done" in again.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["extract", "--out", "x"], "give --videos DIR"),
        (
            ["extract", "--videos", "/no/such/dir", "--out", "x", *TINY_CLI],
            "/no/such/dir: videos directory does not exist",
        ),
        (["extract", "--videos", ".", "--backbone", "dino", "--out", "x"], "unknown backbone 'dino'"),
        (["inspect", "/no/such/cache"], "/no/such/cache: cache directory does not exist"),
        (["inspect", "."], "no manifest (is this a step-cache shard directory?"),
    ],
)
def test_clear_one_line_errors(args, message, tmp_path):
    result = run_cli(*args)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_offline_hub_weights_error(video_tree, tmp_path):
    result = run_cli(
        "extract",
        "--videos",
        video_tree,
        "--out",
        tmp_path / "s",
        "--backbone",
        "vit-tiny",
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path / "hub")},
    )
    assert result.returncode == 1
    assert "pass it with --weights /path/to/model.safetensors" in result.stderr
    assert "--weights random gives" in result.stderr and "weights=" not in result.stderr


def test_strict_exit_code(video_tree, tmp_path):
    result = run_cli("extract", "--videos", video_tree, "--out", tmp_path / "s", *TINY_CLI, "--strict")
    assert result.returncode == 1 and "--strict" in result.stderr


def test_sigkill_mid_run_then_resume(video_tree, tmp_path):
    for i in range(12):  # more work, so the kill lands mid-run
        source = video_tree / "slide_right" / f"slide_right_{i % 4}.mp4"
        (video_tree / "slide_right" / f"copy_{i}.mp4").write_bytes(source.read_bytes())
    good = GOOD_VIDEOS + 12
    out = tmp_path / "s"
    args = [
        sys.executable,
        "-m",
        "cli",
        "extract",
        "--videos",
        str(video_tree),
        "--out",
        str(out),
        *TINY_CLI,
        "--workers",
        "1",
        "--shard-size-mb",
        "0.001",
    ]  # one video per shard
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        manifest = out / "manifest.json"
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = json.loads((out / "manifest.json").read_text())
    assert 3 <= len(before["shards"]) < good, "the kill should land mid-run"
    assert (out / ".lock").exists()  # left behind by the killed process: must be detected as stale

    result = run_cli("extract", "--videos", video_tree, "--out", out, *TINY_CLI, "--shard-size-mb", "0.001", check=True)
    # A shard published just before the kill (not yet in the manifest) is adopted: at least as many are done.
    done = int(re.search(r"(\d+) already done", result.stdout).group(1))
    assert len(before["shards"]) <= done < good
    shards = open_shards(out)
    videos = list(shards.videos)
    assert len(videos) == len(set(videos)) == good  # every good video exactly once
    for index in range(len(shards)):
        assert shards.read_tokens([index]).shape == (1, 4, 5, 192)
    assert not list(out.glob(".shard-*.tmp")) and not (out / ".lock").exists()


def test_unsafe_or_wrong_checkpoints_are_one_line_errors(video_tree, tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": Exploit()}))
    not_state = tmp_path / "list.pth"
    import torch

    torch.save([1, 2, 3], not_state)
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    cut = tmp_path / "cut.pth"
    torch.save({"w": torch.zeros(64)}, cut)
    cut.write_bytes(cut.read_bytes()[:300])
    cases = [
        (evil, "refusing to load: the pickle names Python objects other than tensors (posix.system)"),
        (not_state, "not a state dict"),
        (noise, "not a torch checkpoint (neither a torch.save archive nor a complete pickle)"),  # not "run code"
        (cut, "a damaged torch checkpoint (*); save or copy it again"),  # *: torch's reason, worded by torch's version
    ]
    for path, message in cases:
        result = run_cli("extract", "--videos", video_tree, "--out", tmp_path / "s", *TINY_CLI[:2], "--weights", path)
        assert result.returncode == 1, result.stderr
        pattern = re.escape(f"error: {path}: {message}").replace(r"\*", r"[^\n]+")
        assert re.search(pattern, result.stderr) and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line, torch's essay left out
    assert not marker.exists()


def test_partial_decodes_are_recorded_and_shown(video_tree, tmp_path):
    """A truncated .mkv opens and decodes without error, with fewer frames than the container declares; a segment
    whose end lies past the video's end is clamped. Both are extracted, and both are recorded and shown."""
    import numpy as np

    from step_cache.catalog import VideoItem, write_annotations
    from step_cache.synthetic.videos import moving_square, write_video

    full = write_video(tmp_path / "full.mkv", moving_square(num_frames=40, direction=1, seed=3))
    (video_tree / "slide_right" / "cut.mkv").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    items = [
        VideoItem("slide_left/slide_left_0.mp4", "left"),
        VideoItem("slide_left/slide_left_1.mp4", "left", start_frame=10, end_frame=30),  # the video has 20 frames
        VideoItem("slide_right/cut.mkv", "right"),
    ]
    annotations = write_annotations(video_tree / "ann.csv", items)
    out = tmp_path / "shards"
    result = run_cli("extract", "--annotations", annotations, "--out", out, *TINY_CLI, "--workers", "1", check=True)
    assert "extracted 3 videos" in result.stdout and "2 with warnings" in result.stdout

    warnings = {w["video"]: w["reason"] for w in json.loads((out / "manifest.json").read_text())["warnings"]}
    assert set(warnings) == {"slide_left/slide_left_1.mp4#10-30", "slide_right/cut.mkv"}
    assert re.search(r"truncated: \d+ of the 40 frames the container declares", warnings["slide_right/cut.mkv"])
    assert (
        "segment [10, 30) ends past the video's 20 frames; frames were sampled from [10, 20)"
        in warnings["slide_left/slide_left_1.mp4#10-30"]
    )
    shards = open_shards(out)
    segment = shards.videos.tolist().index("slide_left/slide_left_1.mp4#10-30")
    assert shards.num_frames[segment] == 10 and np.all(shards.frame_indices[segment] < 20)

    shown = run_cli("inspect", out, check=True).stdout
    assert "warnings   2 videos extracted from less than asked for or from damaged data (decoder errors):" in shown
    assert "slide_right/cut.mkv: truncated:" in shown and "ends past the video's 20 frames" in shown
    resumed = run_cli("extract", "--annotations", annotations, "--out", out, *TINY_CLI, "--workers", "1", check=True)
    assert "3 already done" in resumed.stdout
    assert len(json.loads((out / "manifest.json").read_text())["warnings"]) == 2  # kept for the videos kept
