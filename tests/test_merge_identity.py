"""Issue 23 case 5: a part's video root is part of its videos' identity, and a cache given twice is refused.

Two caches extracted from different folders whose files have equal relative names (``left/left_0.mp4`` in both)
are merged through the real CLI: ``verify`` is clean, ``predict`` writes one row per video, training sees all of
them. ``merge M A A`` (also by another path, or a copy) is refused in one line."""

import csv
import json
import shutil
import subprocess
import sys

import pytest
from conftest import TINY

from step_cache import extract, open_shards
from step_cache.cache.manifest import ROOTS_FORMAT_VERSION
from step_cache.cache.verify import verify_cache
from step_cache.extraction.distributed import merge
from step_cache.synthetic.videos import write_class_folders
from step_cache.training.splits import shard_splits
from step_cache.training.trainer import train_probe

CLASSES = {"left": -1, "right": 1}


@pytest.fixture(scope="module")
def two_roots(tmp_path_factory):
    """Caches A and B of two folders with the same relative names (3 videos per class each), different pixels."""
    root = tmp_path_factory.mktemp("merge-identity")
    for name, seed in (("A", 1), ("B", 2)):
        write_class_folders(root / f"videos-{name}", CLASSES, videos_per_class=3, num_frames=8, seed=seed)
        extract(root / f"videos-{name}", root / name, **TINY)
    return root


def cli(*args):
    command = [sys.executable, "-m", "cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_merge_of_two_roots_keeps_every_video_apart(two_roots, tmp_path):
    a, b = two_roots / "A", two_roots / "B"
    result = cli("merge", tmp_path / "M", a, b)
    assert result.returncode == 0, result.stderr
    assert "12 videos, 12 clips in 2 shards" in result.stdout
    data = json.loads((tmp_path / "M" / "manifest.json").read_text())
    roots = [str(two_roots / "videos-A"), str(two_roots / "videos-B")]
    assert data["format_version"] == ROOTS_FORMAT_VERSION == 4  # the only change that needs version 4
    assert [s["root"] for s in data["shards"]] == roots and data["source"]["roots"] == roots
    report = verify_cache(tmp_path / "M")
    assert report.ok, report.problems
    shards = open_shards(tmp_path / "M")
    expected = {f"{root}/{side}/{side}_{i}.mp4" for root in roots for side in CLASSES for i in range(3)}
    assert set(shards.videos.tolist()) == expected  # same names, two roots: qualified by root, 12 videos
    # predict: one row per video, each with its own probabilities
    run = tmp_path / "run"
    train_probe(tmp_path / "M", "linear", run, epochs=1, batch_size=4, progress=False)
    out = tmp_path / "p.csv"
    assert cli("predict", "--run", run, "--features", tmp_path / "M", "--out", out).returncode == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["video"] for row in rows) == sorted(expected)
    assert all(row["clips"] == "1" for row in rows)
    # training sees every video: splits are drawn from 12 distinct videos
    splits = shard_splits(shards, val_fraction=0.25, seed=0)
    seen = shards.videos[[*splits.train, *splits.val]].tolist()
    assert len(seen) == len(set(seen)) == 12


def test_one_root_merge_keeps_the_old_format(two_roots, tmp_path):
    """Parts of one root (extract --num-parts) merge as before: version 1, no root in the shard entries."""
    a = tmp_path / "A"
    shutil.copytree(two_roots / "A", a)
    merged = merge(tmp_path / "M", [a])
    data = json.loads((tmp_path / "M" / "manifest.json").read_text())
    assert data["format_version"] == 1 and all("root" not in s for s in data["shards"])
    assert "roots" not in data["source"] and merged.source["videos"] == str(two_roots / "videos-A")


@pytest.mark.parametrize("how", ["same", "other path", "copy"])
def test_the_same_cache_twice_is_refused(two_roots, tmp_path, how):
    a = two_roots / "A"
    second = {"same": a, "other path": two_roots / "B" / ".." / "A", "copy": tmp_path / "copy"}[how]
    if how == "copy":
        shutil.copytree(a, second)
    result = cli("merge", tmp_path / "M", a, second)
    assert result.returncode == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "count twice; give each part once" in error[0]
    assert ("given twice" if how != "copy" else f"a copy of {a}") in error[0]
    assert f"{second}/shard-00000.h5 has the sha256 of {a}/shard-00000.h5" in error[0]
    assert not (tmp_path / "M" / "manifest.json").exists()


def test_the_same_video_of_one_root_in_two_parts_is_refused(two_roots, tmp_path):
    """A second cache of the same folder (other bytes: gzip shards) holds the same videos: refused by name."""
    extract(two_roots / "videos-A", tmp_path / "Agz", **TINY, compression="gzip")
    with pytest.raises(ValueError, match=r"video left/left_0.mp4 is in both \S+/A and \S+/Agz .*same video twice"):
        merge(tmp_path / "M", [two_roots / "A", tmp_path / "Agz"])
    assert not (tmp_path / "M" / "manifest.json").exists()
