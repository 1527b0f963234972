"""Extraction in parts (SLURM arrays, torchrun ranks) and merging them into one cache."""

import os
import subprocess
import sys

import pytest
from conftest import GOOD_VIDEOS, TINY, TINY_CLI

from step_cache import extract, open_shards
from step_cache.cache.manifest import ManifestError
from step_cache.cache.verify import verify_cache
from step_cache.catalog import VideoItem
from step_cache.extraction.distributed import find_parts, merge, part_directory, part_of, partition


def test_partition_is_stable_complete_and_disjoint():
    items = [VideoItem(f"c/{i}.mp4", "c") for i in range(200)]
    parts = [partition(items, 3, p) for p in range(3)]
    keys = [i.key for part in parts for i in part]
    assert sorted(keys) == sorted(i.key for i in items)
    assert all(40 < len(part) < 90 for part in parts)  # roughly balanced
    # Adding videos never moves an existing one to another part (resume per part stays valid).
    more = partition([*items, *(VideoItem(f"d/{i}.mp4", "d") for i in range(50))], 3, 1)
    assert {i.key for i in parts[1]} <= {i.key for i in more}
    assert part_of("c/7.mp4", 3) == part_of("c/7.mp4", 3)
    with pytest.raises(ValueError, match=r"part= must be in 0..2"):
        partition(items, 3, 3)


def test_parts_then_merge_read_as_one_cache(video_tree, tmp_path):
    out = tmp_path / "s"
    reports = [extract(video_tree, out, **TINY, num_parts=2, part=p) for p in range(2)]
    assert sum(r.videos for r in reports) == GOOD_VIDEOS
    assert all(r.manifest.classes == ["blink", "slide_left", "slide_right"] for r in reports)  # whole catalogue
    with pytest.raises(ManifestError, match="no manifest"):
        open_shards(out)
    merged = merge(out)
    assert merged.num_videos == GOOD_VIDEOS and merged.source["finished"]
    assert all(s.file.startswith("parts/part-00") for s in merged.shards)
    shards = open_shards(out)
    assert len(set(shards.videos)) == len(shards) == GOOD_VIDEOS
    assert verify_cache(out).ok
    assert len(merged.failures) == 3


def test_merge_refuses_missing_or_mismatched_parts(video_tree, tmp_path):
    out = tmp_path / "s"
    extract(video_tree, out, **TINY, num_parts=3, part=0)
    extract(video_tree, out, **TINY, num_parts=3, part=2)
    with pytest.raises(ManifestError, match=r"part\(s\) \[1\] of 3 are missing"):
        find_parts(out)
    extract(video_tree, out, **{**TINY, "frames": 6}, num_parts=3, part=1)
    with pytest.raises(ManifestError, match=r"sampling.frames: 4 != 6"):
        merge(out)


def test_torchrun_two_ranks_with_gloo(video_tree, tmp_path):
    out = tmp_path / "s"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29517",
        "-m",
        "cli",
        "extract",
        "--videos",
        str(video_tree),
        "--out",
        str(out),
        *TINY_CLI,
        "--workers",
        "0",
        "--views",  # every rank draws the views of its videos from the same per-video seeds
        "1",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert part_directory(out, 0, 2).is_dir() and part_directory(out, 1, 2).is_dir()
    shards = open_shards(out)
    clean = shards.views == 0
    assert sorted(shards.videos[clean]) == sorted(set(shards.videos)) and clean.sum() == GOOD_VIDEOS
    assert sorted(shards.videos[~clean]) == sorted(shards.videos[clean])  # one view of each (unsplit) video
    assert verify_cache(out).ok

    # A rank that died is re-run alone, then merged again.
    for path in part_directory(out, 1, 2).iterdir():
        path.unlink()
    part_directory(out, 1, 2).rmdir()
    rerun = [
        sys.executable,
        "-m",
        "cli",
        "extract",
        "--videos",
        str(video_tree),
        "--out",
        str(out),
        *TINY_CLI,
        "--num-parts",
        "2",
        "--part",
        "1",
        "--views",
        "1",
    ]
    assert subprocess.run(rerun, capture_output=True, timeout=300).returncode == 0
    merged = subprocess.run([sys.executable, "-m", "cli", "merge", str(out)], capture_output=True, text=True)
    assert merged.returncode == 0 and f"{GOOD_VIDEOS} videos" in merged.stdout
    assert len(open_shards(out)) == 2 * GOOD_VIDEOS
