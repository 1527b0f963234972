"""``verify`` on caches with augmented views: one clean view per clip, views only on training videos, views 1..N."""

import h5py
import numpy as np

from step_cache.cache.verify import verify_cache
from step_cache.synthetic.tokens import write_token_cache


def _cache(tmp_path):
    out = tmp_path / "c"
    manifest = write_token_cache(
        out, views=2, num_classes=2, videos_per_class=6, val_every=3, test_every=0, clips_per_shard=1000
    )
    return out, out / manifest.shards[0].file


def _rewrite(shard, key, change):
    with h5py.File(shard, "r+") as handle:
        values = handle[key][...]
        change(values, handle["split"].asstr()[...], handle["view"][...])
        handle[key][...] = values


def test_a_cache_with_views_verifies(tmp_path):
    out, _ = _cache(tmp_path)
    report = verify_cache(out)
    assert report.ok, report.summary()


def test_views_on_a_val_video_are_found(tmp_path):
    out, shard = _cache(tmp_path)

    def on_val(view, split, _):
        view[np.nonzero(split == "val")[0][0]] = 1  # a val video's only row becomes a view: no clean clip left

    _rewrite(shard, "view", on_val)
    problems = " ".join(verify_cache(out, checksums=False).problems)
    assert "outside the training split with augmented views" in problems and "other than 1 clip(s)" in problems


def test_a_missing_or_repeated_view_is_found(tmp_path):
    out, shard = _cache(tmp_path)

    def repeat(view, _, views):
        view[np.nonzero(views == 2)[0][0]] = 1  # view 2 of a training clip written as a second view 1

    _rewrite(shard, "view", repeat)
    problems = " ".join(verify_cache(out, checksums=False).problems)
    assert "view 1 also in" in problems and "without exactly views 1..2" in problems


def test_a_view_past_the_count_is_found(tmp_path):
    out, shard = _cache(tmp_path)

    def beyond(view, _, views):
        view[np.nonzero(views == 2)[0][0]] = 3

    _rewrite(shard, "view", beyond)
    problems = " ".join(verify_cache(out, checksums=False).problems)
    assert "without exactly views 1..2" in problems and "(views [1, 3])" in problems
