import json

import h5py
import numpy as np
import pytest

from step_cache.cache.manifest import (
    FORMAT_VERSION,
    Manifest,
    ManifestError,
    TokenLayout,
    read_manifest,
    settings_hash,
    write_manifest,
)
from step_cache.cache.shards import ClipRecord, ShardError, ShardWriter, open_shards, shard_name

LAYOUT = TokenLayout(cls_tokens=1, grid=(2, 3), dim=8, dtype="float16")
FRAMES = 4


def settings(frames=FRAMES):
    return {
        "backbone": {"name": "fake"},
        "weights": {"source": "random", "seed": 0},
        "preprocessing": {},
        "sampling": {"frames": frames, "clips": 1},
        "tokens": LAYOUT.to_dict(),
    }


def write_cache(directory, clips_per_shard=(3, 2), classes=("a", "b"), frames=FRAMES, prefix="v", keys=None):
    rng = np.random.default_rng(0)
    manifest = Manifest(extraction=settings(frames), classes=list(classes), pairs=[("a", "b")])
    written = []
    n = 0
    for index, count in enumerate(clips_per_shard):
        writer = ShardWriter(directory, shard_name(index), LAYOUT, frames, settings=settings_hash(manifest.extraction))
        for _ in range(count):
            tokens = rng.standard_normal((frames, LAYOUT.tokens_per_frame, LAYOUT.dim)).astype(np.float16)
            writer.append(
                ClipRecord(
                    tokens,
                    n % 2,
                    keys[n] if keys else f"{prefix}{n}.mp4",
                    0,
                    "train" if n % 3 else "val",
                    np.arange(frames) * 2,
                    10,
                    False,
                )
            )
            written.append(tokens)
            n += 1
        manifest.shards.append(writer.finish())
    write_manifest(directory, manifest)
    return manifest, np.stack(written)


def test_round_trip_tokens_and_metadata(tmp_path):
    _manifest, tokens = write_cache(tmp_path)
    shards = open_shards(tmp_path)
    assert len(shards) == 5 and shards.clip_shape == (FRAMES, 7, 8)
    np.testing.assert_array_equal(shards.read_tokens(range(5)), tokens)
    order = [4, 0, 3, 3, 1]  # across shards, unsorted, repeated
    np.testing.assert_array_equal(shards.read_tokens(order), tokens[order])
    assert shards.labels.tolist() == [0, 1, 0, 1, 0]
    assert shards.videos.tolist() == [f"v{i}.mp4" for i in range(5)]
    assert shards.splits.tolist() == ["val", "train", "train", "val", "train"]
    np.testing.assert_array_equal(shards.frame_indices[2], [0, 2, 4, 6])
    assert shards.locate(3) == (1, 0)
    assert shards.tokens_nbytes == tokens.nbytes


def test_manifest_contents(tmp_path):
    manifest, _ = write_cache(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    # a float cache is written as version 1 (older step-cache reads it); only int8 tokens need version 2
    assert data["format"] == "step-cache-shards" and data["format_version"] == 1
    assert data["num_clips"] == 5 and data["classes"] == ["a", "b"] and data["pairs"] == [["a", "b"]]
    assert [s["clips"] for s in data["shards"]] == [3, 2]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in data["shards"])
    assert data["extraction"]["tokens"]["tokens_per_frame"] == 7
    assert read_manifest(tmp_path).content_hash() == manifest.content_hash()


def test_newer_format_version_is_refused(tmp_path):
    write_cache(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="newer than this step-cache reads"):
        open_shards(tmp_path)


def test_not_a_cache(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        open_shards(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(ManifestError, match="not a step-cache shard manifest"):
        open_shards(tmp_path)


def test_unfinished_shard_is_never_published_or_read(tmp_path):
    writer = ShardWriter(tmp_path, shard_name(0), LAYOUT, FRAMES)
    writer.append(ClipRecord(np.zeros((FRAMES, 7, 8), np.float16), 0, "x", 0, "", np.arange(FRAMES), 4, False))
    assert not (tmp_path / shard_name(0)).exists() and writer.tmp_path.exists()
    writer._file.flush()
    from step_cache.cache.shards import read_shard_metadata

    with pytest.raises(ShardError, match="incomplete"):
        read_shard_metadata(writer.tmp_path)
    writer.abandon()
    assert not writer.tmp_path.exists()


def test_shard_that_disagrees_with_manifest(tmp_path):
    write_cache(tmp_path)
    with h5py.File(tmp_path / shard_name(1), "a") as handle:
        for key in handle:
            handle[key].resize(1, axis=0)
    with pytest.raises(ShardError, match="holds 1 clips but the manifest says 2"):
        open_shards(tmp_path, check=False)
    with pytest.raises(ShardError, match=f"{shard_name(1)}: .*run step-cache verify"):
        open_shards(tmp_path)
    (tmp_path / shard_name(1)).unlink()
    with pytest.raises(ShardError, match="missing"):
        open_shards(tmp_path)


def test_combining_caches_checks_compatibility(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    write_cache(a)
    write_cache(b, clips_per_shard=(2,), prefix="w")
    assert len(open_shards([a, b])) == 7
    with pytest.raises(ShardError, match=r"video v0.mp4 is in both .*/a and .*/a"):
        open_shards([a, a])  # the same videos twice would be averaged together as one
    write_cache(c, frames=8)
    with pytest.raises(ManifestError, match=r"sampling.frames: 4 != 8"):
        open_shards([a, c])


def _set_videos_root(directory, root):
    manifest = read_manifest(directory)
    manifest.source["videos"] = root
    write_manifest(directory, manifest)


def test_caches_of_two_roots_with_the_same_file_names_combine(tmp_path):
    """Keys are paths relative to each cache's videos root: the same names under two roots are two videos."""
    a, b = tmp_path / "a", tmp_path / "b"
    for directory, root in ((a, "/data/kitchen"), (b, "/data/garage")):
        directory.mkdir()
        write_cache(directory)  # both hold v0.mp4 .. v4.mp4
        _set_videos_root(directory, root)
    b_only = tmp_path / "b_only"
    b_only.mkdir()
    write_cache(b_only, clips_per_shard=(1,), prefix="w")
    _set_videos_root(b_only, "/data/garage")

    shards = open_shards([a, b, b_only])
    assert len(shards) == 11
    videos = shards.videos.tolist()
    assert len(set(videos)) == 11  # every clip is its own video: none merged
    assert videos[:2] == ["/data/kitchen/v0.mp4", "/data/kitchen/v1.mp4"]  # shared names carry their root
    assert videos[5] == "/data/garage/v0.mp4" and videos[-1] == "w0.mp4"  # unshared keys stay as they were
    assert open_shards(a).videos.tolist()[0] == "v0.mp4"  # one cache alone: keys unchanged


def test_the_same_video_in_two_caches_is_refused(tmp_path):
    a, copy = tmp_path / "a", tmp_path / "copy"
    for directory in (a, copy):
        directory.mkdir()
        write_cache(directory)
        _set_videos_root(directory, "/data/kitchen")  # the same root and path: the same video extracted twice
    with pytest.raises(
        ShardError,
        match=r"video v0.mp4 is in both .*/a and .*/copy \(both extracted from "
        r"/data/kitchen\): that is the same video twice; give each cache directory once",
    ):
        open_shards([a, copy])


def _cache_of(directory, root, keys):
    directory.mkdir()
    write_cache(directory, clips_per_shard=(len(keys),), keys=keys)
    _set_videos_root(directory, root)
    return directory


def test_segments_of_a_shared_file_name_keep_their_root_and_their_file(tmp_path):
    """Segment keys (FILE#start-end) collide on their source file, not on the exact key: every segment of a file two
    roots share is qualified, so the train/val holdout (grouped by source file) keeps each root's file on one side
    and never takes two roots' files for one video."""
    from step_cache.catalog import source_video

    kitchen = _cache_of(tmp_path / "kitchen", "/data/kitchen", ["v0.mp4#0-10", "v0.mp4#10-20"])
    garage = _cache_of(tmp_path / "garage", "/data/garage", ["v0.mp4#0-10", "v0.mp4#20-30"])
    videos = open_shards([kitchen, garage]).videos.tolist()
    assert videos == [
        "/data/kitchen/v0.mp4#0-10",
        "/data/kitchen/v0.mp4#10-20",
        "/data/garage/v0.mp4#0-10",
        "/data/garage/v0.mp4#20-30",
    ]
    assert [source_video(v) for v in videos] == ["/data/kitchen/v0.mp4"] * 2 + ["/data/garage/v0.mp4"] * 2


def test_a_video_keeps_its_name_when_another_cache_is_added(tmp_path):
    """Every key of a cache that shares a source file with a cache of another root is qualified, not only the shared
    ones: adding a third cache that shares another of its files renames nothing already named."""
    a = _cache_of(tmp_path / "a", "/data/kitchen", ["v0.mp4", "v1.mp4#0-5"])
    b = _cache_of(tmp_path / "b", "/data/garage", ["v0.mp4"])
    c = _cache_of(tmp_path / "c", "/data/yard", ["v1.mp4#5-9"])
    two = open_shards([a, b]).videos.tolist()
    three = open_shards([a, b, c]).videos.tolist()
    assert two == ["/data/kitchen/v0.mp4", "/data/kitchen/v1.mp4#0-5", "/data/garage/v0.mp4"]
    assert three == [*two, "/data/yard/v1.mp4#5-9"]


def test_segments_of_one_file_under_one_root_in_two_caches_combine_as_one_file(tmp_path):
    """The same root and file in two caches, different segments: one video file, names unchanged (grouped together);
    the same root and the exact same key is the same clip twice and still refused."""
    a = _cache_of(tmp_path / "a", "/data/kitchen", ["v0.mp4#0-10"])
    b = _cache_of(tmp_path / "b", "/data/kitchen", ["v0.mp4#10-20"])
    assert open_shards([a, b]).videos.tolist() == ["v0.mp4#0-10", "v0.mp4#10-20"]
    c = _cache_of(tmp_path / "c", "/data/kitchen/", ["v0.mp4#0-10"])  # a trailing slash is the same root
    with pytest.raises(ShardError, match=r"video v0.mp4#0-10 is in both .*/a and .*/c .*the same video twice"):
        open_shards([a, b, c])


def test_shard_set_pickles_without_handles(tmp_path):
    import pickle

    _, tokens = write_cache(tmp_path)
    shards = open_shards(tmp_path)
    shards.read_tokens([0])
    clone = pickle.loads(pickle.dumps(shards))
    np.testing.assert_array_equal(clone.read_tokens([4]), tokens[[4]])


def test_an_interrupt_inside_the_first_video_publishes_no_empty_shard(tmp_path, monkeypatch):
    from step_cache.cache.writer import CacheWriter

    manifest = Manifest(extraction=settings(), classes=["a", "b"])
    cache = CacheWriter(tmp_path, manifest, LAYOUT, FRAMES, next_index=0, shard_clips=100, compression="none")
    tokens = np.zeros((FRAMES, LAYOUT.tokens_per_frame, LAYOUT.dim), np.float16)
    clips = [ClipRecord(tokens, 0, "v.mp4", clip, "train", np.arange(FRAMES), 10, False) for clip in range(2)]
    real_append = ShardWriter._append_clip

    def interrupted(self, record):
        if record.clip == 1:
            raise KeyboardInterrupt
        real_append(self, record)

    monkeypatch.setattr(ShardWriter, "_append_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.append_video(clips)
    cache.finish({})  # what extraction does on Ctrl-C: publish the whole videos written so far
    assert read_manifest(tmp_path).shards == []
    assert not list(tmp_path.glob("*.h5*"))


def test_manifest_warnings_are_optional_and_round_trip(tmp_path):
    from step_cache.cache.manifest import VideoWarning

    manifest = Manifest(extraction=settings(), classes=["a"])
    data = manifest.to_dict()
    assert "warnings" not in data  # a cache without warnings keeps the manifest (and content hash) it had
    assert Manifest.from_dict(data).warnings == []  # manifests written before warnings existed read unchanged
    manifest.warnings = [VideoWarning("v.mkv", "v.mkv: truncated: 19 of the 40 frames ...")]
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path).warnings == manifest.warnings
