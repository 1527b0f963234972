"""``step-cache extract --views`` end to end on a generated demo: what the shards hold, inspect, verify, resume,
parts + merge and compact with views, and a cache without views as before."""

import json

import h5py
import numpy as np
import pytest
from conftest import TINY_CLI
from test_cli_extract import run_cli

from step_cache import open_shards

VIEWS = ["--views", "2", "--view-flip", "--view-colour", "0.2"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("views") / "demo"
    run_cli("make-demo", root, "--per-class", "5", "--frames", "17", "--size", "64x48", "--kinds", "slide,shake",
            check=True)  # fmt: skip
    (root / "flips.txt").write_text("slide_left,slide_right\n")
    return root


def rows(directory):
    """(video, clip, view) -> (row, view_params, tokens as float32, label, frame_indices)."""
    with open_shards(directory) as shards:
        tokens = shards.read_tokens(np.arange(len(shards)), np.float32)
        return {
            (str(v), int(c), int(w)): (i, str(p), tokens[i], int(label), shards.frame_indices[i].tolist(), str(s))
            for i, (v, c, w, p, label, s) in enumerate(
                zip(
                    shards.videos,
                    shards.clip_index,
                    shards.views,
                    shards.view_params,
                    shards.labels,
                    shards.splits,
                    strict=True,
                )
            )
        }


def test_extract_with_views(demo, tmp_path):
    out = tmp_path / "c"
    command = ["extract", "--annotations", demo / "annotations.csv", "--out", out, *TINY_CLI, "--workers", "1"]
    result = run_cli(*command, *VIEWS, "--flip-pairs", demo / "flips.txt", check=True)
    assert "augmented view clips" in result.stdout

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 3
    assert manifest["extraction"]["views"] == {
        "count": 2, "scale": [0.3, 1.0], "ratio": [0.75, 1.35], "span": None, "colour": 0.2, "flip": True,
        "flip_pairs": [["slide_left", "slide_right"]], "seed": 0,
    }  # fmt: skip
    table = rows(out)
    classes = manifest["classes"]
    splits = {video: split for (video, _, _), (*_, split) in table.items()}
    train = {video for video, split in splits.items() if split == "train"}
    assert train and set(splits.values()) == {"train", "val", "test"}
    for video, split in splits.items():
        views = sorted(view for v, _, view in table if v == video)
        assert views == ([0, 1, 2] if split == "train" else [0]), (video, views)
    flips = []
    for (video, clip, view), (_, params_text, tokens, label, indices, _) in table.items():
        clean = table[(video, clip, 0)]
        if view == 0:
            assert params_text == ""
            continue
        params = json.loads(params_text)
        assert params["view"] == view and params["clip"] == clip and params["frame_indices"] == indices
        top, left, h, w = params["crop"]
        assert top >= 0 and top + h <= 48 and left >= 0 and left + w <= 64
        assert all(0.8 <= f <= 1.2 for f in params["colour"])
        assert np.abs(tokens - clean[2]).max() > 0  # another crop of the video: other tokens
        name = classes[clean[3]]
        mirror = {"slide_left": "slide_right", "slide_right": "slide_left"}.get(name, name)
        assert classes[label] == (mirror if params["flip"] else name)
        flips.append((name, params["flip"]))
    assert ("slide_left", True) in flips or ("slide_right", True) in flips
    assert any(not flip for _, flip in flips)

    shown = run_cli("inspect", out, check=True).stdout
    assert f"{len(splits)} clips + {2 * len(train)} of augmented views" in shown
    assert "views      2 per training video: crop scale 0.3-1.0, ratio 0.75-1.35" in shown
    assert f"2 views: {len(train)} videos" in shown and "flip p 0.5, labels swapped for 1 pair(s)" in shown
    summary = json.loads(run_cli("inspect", out, "--json", check=True).stdout)
    assert summary["view_clips"] == 2 * len(train) and summary["views"]["count"] == 2
    assert run_cli("verify", out, check=True).stdout.startswith("OK")

    again = run_cli(*command, *VIEWS, "--flip-pairs", demo / "flips.txt", check=True)
    assert "extracted 0 videos" in again.stdout
    refused = run_cli(*command, "--views", "3", "--view-flip", "--view-colour", "0.2", "--flip-pairs",
                      demo / "flips.txt")  # fmt: skip
    assert refused.returncode == 1 and "views.count: 2 != 3" in refused.stderr

    # parts and merge draw the same views (each seeded by the video, not by its place in the run)
    parts = tmp_path / "p"
    for part in ("0", "1"):
        run_cli(*command[:4], parts, *command[5:], *VIEWS, "--flip-pairs", demo / "flips.txt", "--num-parts", "2",
                "--part", part, check=True)  # fmt: skip
    run_cli("merge", parts, check=True)
    assert run_cli("verify", parts, check=True).stdout.startswith("OK")
    merged = rows(parts)
    assert merged.keys() == table.keys()
    for key, value in table.items():
        assert merged[key][1] == value[1] and merged[key][3] == value[3]
        np.testing.assert_array_equal(merged[key][2], value[2])

    # compact carries every view row and its parameters
    run_cli("compact", out, "--out", tmp_path / "k", "--dtype", "int8", "--quiet", check=True)
    assert run_cli("verify", tmp_path / "k", check=True).stdout.startswith("OK")
    compacted = rows(tmp_path / "k")
    assert compacted.keys() == table.keys()
    assert all(compacted[k][1] == v[1] and compacted[k][3] == v[3] for k, v in table.items())


def test_views_checks_and_a_cache_without_views(demo, tmp_path):
    out = tmp_path / "plain"
    base = ["extract", "--annotations", demo / "annotations.csv", "--out", out, *TINY_CLI, "--workers", "0"]
    run_cli(*base, check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "views" not in manifest["extraction"] and manifest["format_version"] == 1
    with h5py.File(next(out.glob("shard-*.h5")), "r") as handle:
        assert "view" not in handle and "view_params" not in handle and handle.attrs["format_version"] == 1

    bad = run_cli(*base[:4], tmp_path / "x", *base[5:], "--views", "1", "--view-scale", "0.5")
    assert bad.returncode != 0 and "expected LO,HI" in bad.stderr
    bad = run_cli(*base[:4], tmp_path / "x", *base[5:], "--views", "1", "--flip-pairs", demo / "flips.txt")
    assert bad.returncode == 1 and "needs --view-flip" in bad.stderr
    (demo / "bad_flips.txt").write_text("slide_left,jump\n")
    bad = run_cli(*base[:4], tmp_path / "x", *base[5:], "--views", "1", "--view-flip", "--flip-pairs",
                  demo / "bad_flips.txt")  # fmt: skip
    assert bad.returncode == 1 and "bad_flips.txt:1: class 'jump' is not among the classes" in bad.stderr
