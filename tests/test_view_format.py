"""Format version 3: augmented views stored beside the clean clip (the contract extract --views writes)."""

import json

import h5py
import numpy as np
import pytest

from step_cache.cache.manifest import FORMAT_VERSION, ManifestError, read_manifest
from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache


def test_views_are_stored_for_training_videos_only_and_read_back(tmp_path):
    manifest = write_token_cache(tmp_path / "c", views=2, num_classes=2, videos_per_class=6, val_every=3, test_every=0)
    assert manifest.view_count == 2 and manifest.format_version == 3
    on_disk = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert on_disk["format_version"] == 3 and on_disk["extraction"]["views"]["count"] == 2
    with h5py.File(tmp_path / "c" / manifest.shards[0].file) as shard:
        assert shard.attrs["format_version"] == 3
    shards = open_shards(tmp_path / "c")
    train = shards.splits == "train"
    # every training video: the clean clip and views 1 and 2; val videos: the clean clip only
    for video in np.unique(shards.videos[train]):
        assert sorted(shards.views[shards.videos == video].tolist()) == [0, 1, 2]
    assert set(shards.views[~train].tolist()) == {0}
    augmented = shards.views > 0
    assert all(json.loads(p) == {"noise": 0.25} for p in shards.view_params[augmented])
    assert set(shards.view_params[~augmented].tolist()) == {""}
    # a view is its video's clean tokens, perturbed: closer to them than to another video's
    video = shards.videos[augmented][0]
    rows = np.flatnonzero(shards.videos == video)
    clean, view = (shards.read_tokens([r]).astype(np.float32) for r in rows[:2])
    other = shards.read_tokens([np.flatnonzero(shards.videos != video)[0]]).astype(np.float32)
    assert np.abs(view - clean).mean() < np.abs(other - clean).mean()


def test_a_cache_without_views_stays_at_its_old_version_and_reads_as_clean(tmp_path):
    manifest = write_token_cache(tmp_path / "c")
    assert manifest.view_count == 0 and manifest.format_version == 1
    with h5py.File(tmp_path / "c" / manifest.shards[0].file) as shard:
        assert "view" not in shard and shard.attrs["format_version"] == 1
    shards = open_shards(tmp_path / "c")
    assert shards.views.tolist() == [0] * len(shards) and set(shards.view_params.tolist()) == {""}


def test_a_newer_format_is_refused_by_name(tmp_path):
    write_token_cache(tmp_path / "c")
    path = tmp_path / "c" / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=f"version {FORMAT_VERSION + 1} is newer"):
        read_manifest(tmp_path / "c")
