"""The built-in benchmark of nearly symmetric actions: files, mirror property, determinism, split, CLI, statistics."""

from __future__ import annotations

import json
from collections import Counter

import decord
import numpy as np
import pytest
from typer.testing import CliRunner

from step_cache.catalog import discover_videos, read_annotations, read_pairs
from step_cache.demo_dataset import (
    DEFAULT_KINDS,
    KINDS,
    BenchmarkError,
    SceneConfig,
    class_table,
    make_demo_dataset,
    parse_size,
    render_clip,
)
from step_cache.demo_dataset.dataset import stratified_split

SIZE = (64, 48)  # width, height: tiny but even
FRAMES = 12


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_dataset(root, per_class=4, seed=3, num_frames=FRAMES, size=SIZE, val_fraction=0.25, progress=False)


def _decode(path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_files_annotations_and_pairs_are_written_and_readable(demo):
    items = read_annotations(demo.annotations_path, videos_root=demo.root)
    assert items == demo.items
    assert len(items) == 4 * len(demo.classes)
    assert Counter(item.label for item in items) == dict.fromkeys(demo.classes, 4)
    assert all(item.path == f"{item.label}/{item.label}_{item.path[-7:-4]}.mp4" for item in items)
    # The class-folder layout gives the same labelled videos without the CSV.
    assert sorted((i.path, i.label) for i in discover_videos(demo.root)) == sorted((i.path, i.label) for i in items)
    assert read_pairs(demo.pairs_path, classes=demo.classes) == demo.pairs
    metadata = json.loads((demo.root / "benchmark.json").read_text())
    assert metadata["classes"] == demo.classes and metadata["seed"] == 3 and metadata["size"] == list(SIZE)


def test_pairs_are_complementary_and_cover_five_kinds_and_an_order_free_class(demo):
    assert len(demo.pairs) >= 5 and len(demo.order_free) >= 1
    paired = [label for pair in demo.pairs for label in pair]
    assert len(paired) == len(set(paired))  # each class in at most one pair
    assert sorted(paired + demo.order_free) == sorted(demo.classes)  # and every class is paired or order-free
    table = class_table(DEFAULT_KINDS)
    for forward, backward in demo.pairs:
        assert table[forward][0] is table[backward][0]  # the same process ...
        assert (table[forward][1], table[backward][1]) == (False, True)  # ... forwards, then backwards
    assert len({table[a][0].name for a, _ in demo.pairs}) == len(demo.pairs)  # of different kinds


@pytest.mark.parametrize("kind", [name for name in KINDS if KINDS[name].mirrored])
def test_mirrored_clip_is_the_time_reversal_of_the_forward_process(kind):
    forward, backward = KINDS[kind].classes
    scene = SceneConfig.from_difficulty(1.0)  # every random element switched on
    for seed in range(3):
        a = render_clip(forward, np.random.default_rng(seed), FRAMES, SIZE, scene)
        b = render_clip(backward, np.random.default_rng(seed), FRAMES, SIZE, scene)
        np.testing.assert_array_equal(b.frames, a.frames[::-1])
        np.testing.assert_array_equal(b.main.centre, a.main.centre[::-1])
        np.testing.assert_array_equal(b.progress, a.progress[::-1])
        assert a.progress[0] == 0 and a.progress[-1] == 1 and np.all(np.diff(a.progress) >= 0)
        assert not np.array_equal(a.frames[0], a.frames[-1])  # something happened


def test_forward_classes_do_what_their_names_say():
    width = SIZE[0]
    for seed in range(5):
        rng = lambda seed=seed: np.random.default_rng(seed)  # noqa: E731
        slide = render_clip("slide_right", rng(), FRAMES, SIZE).main
        assert slide.centre[-1, 0] - slide.centre[0, 0] > 0.4 * width * np.cos(np.pi / 7)
        door = render_clip("open", rng(), FRAMES, SIZE).main
        assert door.half_size[-1, 0] < 0.55 * door.half_size[0, 0]  # the panel narrows as it swings open
        hand = render_clip("rotate_cw", rng(), FRAMES, SIZE).main
        assert np.degrees(hand.angle[-1] - hand.angle[0]) >= 140  # y points down: a growing angle is clockwise
        fade = render_clip("fade_in", rng(), FRAMES, SIZE).main
        assert fade.opacity[0] == 0 and fade.opacity[-1] == 1
        near = render_clip("approach", rng(), FRAMES, SIZE).main
        assert near.half_size[-1, 0] > 2.0 * near.half_size[0, 0] and near.centre[-1, 1] > near.centre[0, 1]
        away = render_clip("recede", rng(), FRAMES, SIZE).main
        assert away.half_size[-1, 0] < 0.5 * away.half_size[0, 0]


def test_generation_is_deterministic_for_a_seed_and_stable_across_settings(tmp_path):
    first = render_clip("rotate_ccw", np.random.default_rng([5, 1]), FRAMES, SIZE).frames
    assert np.array_equal(first, render_clip("rotate_ccw", np.random.default_rng([5, 1]), FRAMES, SIZE).frames)
    assert not np.array_equal(first, render_clip("rotate_ccw", np.random.default_rng([6, 1]), FRAMES, SIZE).frames)
    a = make_demo_dataset(
        tmp_path / "a", per_class=3, seed=9, num_frames=8, size=SIZE, kinds=["slide", "shake"], progress=False
    )
    b = make_demo_dataset(
        tmp_path / "b",
        per_class=2,
        seed=9,
        num_frames=8,
        size=SIZE,
        kinds=["shake", "slide"],
        val_fraction=0.5,
        test_fraction=0.0,
        progress=False,
    )
    # The same clip whatever the other classes or the number of clips: each clip has its own random stream.
    for name in ("slide_left/slide_left_000.mp4", "shake/shake_001.mp4"):
        np.testing.assert_array_equal(_decode(a.root / name), _decode(b.root / name))
    c = make_demo_dataset(
        tmp_path / "c", per_class=3, seed=9, num_frames=8, size=SIZE, kinds=["slide", "shake"], progress=False
    )
    assert (a.annotations_path.read_bytes(), a.pairs_path.read_bytes()) == (
        c.annotations_path.read_bytes(),
        c.pairs_path.read_bytes(),
    )


def test_decoded_videos_have_the_requested_frames_and_size_and_are_near_lossless(demo):
    width, height = SIZE
    for forward, _ in demo.pairs[:2]:
        decoded = _decode(demo.root / forward / f"{forward}_000.mp4")
        assert decoded.shape == (FRAMES, height, width, 3)
    for item in demo.items:
        reader = decord.VideoReader(str(demo.root / item.path))
        assert len(reader) == FRAMES and reader[0].shape == (height, width, 3)
    # Re-render one clip and compare: only the yuv420p colour subsampling and a tiny x264 error remain.
    from step_cache.demo_dataset.dataset import clip_rng

    label = demo.classes[0]
    rendered = render_clip(label, clip_rng(3, label, 0), FRAMES, SIZE, SceneConfig.from_difficulty(0.5)).frames
    decoded = _decode(demo.root / label / f"{label}_000.mp4").astype(float)
    other = render_clip(label, clip_rng(3, label, 1), FRAMES, SIZE, SceneConfig.from_difficulty(0.5)).frames
    error, error_to_other = np.abs(decoded - rendered).mean(), np.abs(decoded - other).mean()
    assert error < 6.0 and error < error_to_other / 4


def test_split_is_stratified_and_deterministic(demo, tmp_path):
    val = Counter(item.label for item in demo.items if item.split == "val")
    assert val == dict.fromkeys(demo.classes, 1)  # 25 % of 4 in every class
    assert {item.split for item in demo.items} == {"train", "val", "test"}
    all_train = make_demo_dataset(
        tmp_path / "t",
        per_class=2,
        num_frames=4,
        size=(32, 32),
        val_fraction=0.0,
        test_fraction=0.0,
        kinds=["fade"],
        progress=False,
    )
    assert {item.split for item in all_train.items} == {"train"}
    with pytest.raises(BenchmarkError, match="at least 3 videos per class"):
        make_demo_dataset(tmp_path / "u", per_class=2, num_frames=4, size=(32, 32), progress=False)
    with pytest.raises(BenchmarkError, match="at least 2 videos per class"):
        make_demo_dataset(tmp_path / "v", per_class=1, test_fraction=0.0, num_frames=4, size=(32, 32), progress=False)


def test_default_split_is_60_20_20_per_class_and_the_same_for_a_seed():
    split = stratified_split(["a", "b"], per_class=10, val_fraction=0.2, seed=4, test_fraction=0.2)
    for label in ("a", "b"):
        counts = Counter(split[(label, i)] for i in range(10))
        assert counts == {"train": 6, "val": 2, "test": 2}
    assert split == stratified_split(["a", "b"], per_class=10, val_fraction=0.2, seed=4, test_fraction=0.2)
    assert split != stratified_split(["a", "b"], per_class=10, val_fraction=0.2, seed=5, test_fraction=0.2)
    # Held-out videos are disjoint: no video is both val and test.
    assert sum(v == "test" for v in split.values()) == 4


def test_bad_settings_get_clear_errors(tmp_path):
    with pytest.raises(BenchmarkError, match="even width and height"):
        make_demo_dataset(tmp_path, size=(113, 112), progress=False)
    with pytest.raises(BenchmarkError, match="unknown action kind"):
        make_demo_dataset(tmp_path, kinds=["slide", "teleport"], progress=False)
    with pytest.raises(BenchmarkError, match="difficulty must be between 0 and 1"):
        make_demo_dataset(tmp_path, difficulty=1.5, progress=False)
    with pytest.raises(BenchmarkError, match="hue_spread"):
        make_demo_dataset(tmp_path, scene=SceneConfig(hue_spread=0.7), progress=False)
    with pytest.raises(BenchmarkError, match="action_fraction"):
        make_demo_dataset(tmp_path, scene=SceneConfig(action_fraction=(0.9, 0.5)), progress=False)
    with pytest.raises(BenchmarkError, match="WIDTHxHEIGHT"):
        parse_size("112 by 112")
    assert parse_size("128x96") == (128, 96)
    # decord 0.6 misreads some widths (48, 72): refuse them up front rather than write unreadable data.
    try:
        tiny = make_demo_dataset(
            tmp_path / "w48", per_class=3, num_frames=4, size=(48, 32), kinds=["fade"], progress=False
        )
        assert _decode(tiny.root / tiny.items[0].path).shape == (4, 32, 48, 3)
    except BenchmarkError as error:
        assert "choose another size" in str(error) and not (tmp_path / "w48").exists()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BenchmarkError, match="not empty"):
        make_demo_dataset(tmp_path, per_class=3, num_frames=4, size=(32, 32), progress=False)
    with pytest.raises(BenchmarkError, match="refusing to delete"):
        make_demo_dataset(tmp_path, per_class=3, num_frames=4, size=(32, 32), overwrite=True, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _cli():
    from cli.main import _register_commands, app

    _register_commands()
    return app


def test_cli_make_demo_writes_a_dataset_and_overwrites_only_with_the_flag(tmp_path):
    runner = CliRunner()
    args = [
        "make-demo",
        str(tmp_path / "d"),
        "--per-class",
        "3",
        "--frames",
        "6",
        "--size",
        "64x32",
        "--kinds",
        "slide,rotate,shake",
        "--seed",
        "4",
    ]
    result = runner.invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "2 mirrored pairs" in result.output and "slide_right/slide_left" in result.output
    items = read_annotations(tmp_path / "d" / "annotations.csv", tmp_path / "d")
    assert len(items) == 15 and {item.split for item in items} == {"train", "val", "test"}
    assert read_pairs(tmp_path / "d" / "pairs.txt") == [
        ("slide_right", "slide_left"),
        ("rotate_cw", "rotate_ccw"),
    ]
    assert decord.VideoReader(str(tmp_path / "d" / items[0].path))[0].shape == (32, 64, 3)

    again = runner.invoke(_cli(), args)
    assert again.exit_code == 1 and "not empty" in again.output and "--overwrite" in again.output
    replaced = runner.invoke(_cli(), [*args[:-1], "5", "--kinds", "fade", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "annotations.csv",
        "benchmark.json",
        "fade_in",
        "fade_out",
        "pairs.txt",
    ]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--size", "113x112", "even width and height"),
        ("--size", "big", "WIDTHxHEIGHT"),
        ("--per-class", "0", "per_class must be at least 1"),
        ("--kinds", "slide,warp", "unknown action kind(s) warp"),
    ],
)
def test_cli_rejects_bad_arguments_with_one_clear_line(tmp_path, option, value, message):
    result = CliRunner().invoke(_cli(), ["make-demo", str(tmp_path / "d"), option, value])
    assert result.exit_code == 1
    assert message in result.output and result.output.startswith("error: ")
    assert not (tmp_path / "d").exists()


def _motion_slope(frames: np.ndarray) -> float:
    """Order-aware: how the x-centroid of frame-to-frame change moves over time (right: > 0)."""
    change = np.abs(np.diff(frames.astype(np.float32), axis=0)).sum(axis=-1)  # (T-1, H, W)
    weight = change.sum(axis=1)  # (T-1, W)
    moving = weight.sum(axis=1) > 0
    centroid = (weight * np.arange(frames.shape[2])).sum(axis=1) / np.maximum(weight.sum(axis=1), 1e-6)
    t = np.arange(len(centroid))[moving]
    return float(np.polyfit(t, centroid[moving], 1)[0]) if len(t) > 1 else 0.0


def _permutation_p_value(features: np.ndarray, labels: np.ndarray, permutations: int = 2000) -> float:
    """How often shuffled labels separate the class means at least as well as the real ones (one-sided)."""
    z = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-9)

    def separation(y):
        return float(np.sum((z[y == 0].mean(axis=0) - z[y == 1].mean(axis=0)) ** 2))

    observed = separation(labels)
    rng = np.random.default_rng(0)
    hits = sum(separation(rng.permutation(labels)) >= observed for _ in range(permutations))
    return (1 + hits) / (1 + permutations)


def test_frame_statistics_do_not_separate_a_pair_but_order_does(tmp_path):
    """A mirrored clip is a forward clip's frames in reverse order, so any statistic of the *set* of frames has
    the same distribution in both classes: a permutation test must not find the classes' means apart (beyond
    a 1 % false alarm). The direction of motion, an order statistic, must separate them clearly."""
    data = make_demo_dataset(
        tmp_path, per_class=10, seed=1, num_frames=16, size=(64, 64), kinds=["slide"], val_fraction=0.0, progress=False
    )
    videos = [_decode(data.root / item.path) for item in data.items]
    labels = np.array([item.label == "slide_left" for item in data.items], dtype=int)
    bins = np.linspace(0, 256, 9)
    histograms = np.stack(
        [np.concatenate([np.histogram(v[..., c], bins=bins)[0] / v[..., c].size for c in range(3)]) for v in videos]
    )
    mean_frames = np.stack([v.mean(axis=0)[::8, ::8].ravel() / 255 for v in videos])
    assert _permutation_p_value(histograms, labels) > 0.01
    assert _permutation_p_value(mean_frames, labels) > 0.01
    slopes = np.array([[_motion_slope(v)] for v in videos])
    assert _permutation_p_value(slopes, labels) < 0.01
    assert np.mean((slopes[:, 0] < 0) == labels) >= 0.85


@pytest.mark.parametrize("num_frames", [9, 17, 33, 47, 65])
def test_odd_frame_counts_sample_a_clip_and_its_reverse_at_mirrored_frames(num_frames):
    """A mirrored clip shows frame N - 1 - f of its partner at f: for odd N the frames extraction samples from it
    are exactly the partner's sampled frames in reverse order, for every T and number of clips."""
    from step_cache.extraction.sampling import segment_indices

    for frames in range(1, num_frames + 1):
        for clips in (1, 2, 3):
            sampled = segment_indices(num_frames, frames, clips)
            mirrored = num_frames - 1 - sampled[::-1, ::-1]  # the reverse video's clips, frames back to front
            np.testing.assert_array_equal(sampled, mirrored)


def test_even_frame_counts_leak_order_and_make_demo_warns(tmp_path, caplog):
    from step_cache.extraction.sampling import segment_indices

    sampled = segment_indices(32, 4)[0]
    assert sampled.tolist() == [4, 12, 20, 28] and (31 - sampled[::-1]).tolist() == [3, 11, 19, 27]
    make_demo_dataset(tmp_path, per_class=3, num_frames=8, size=SIZE, kinds=["fade"], progress=False)
    assert "8 frames per video is even" in caplog.text
