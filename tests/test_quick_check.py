"""``extract`` answers a no-op re-run and refuses a settings mismatch before loading the backbone or starting
decode workers (extraction/quick_check.py)."""

from __future__ import annotations

import json

import pytest
from conftest import BAD_VIDEOS, GOOD_VIDEOS, TINY

from step_cache.catalog import VideoItem
from step_cache.extraction import engine
from step_cache.extraction.engine import ExtractionError, extract


@pytest.fixture
def no_backbone(monkeypatch):
    """Loading a backbone or starting decode workers fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the backbone was loaded / decoders started")

    monkeypatch.setattr(engine, "load_backbone", forbidden)
    monkeypatch.setattr(engine, "open_decode_pool", forbidden)


@pytest.fixture
def cache(video_tree, tmp_path):
    """A finished cache of the good videos (failed ones would be tried again: not a no-op)."""
    out = tmp_path / "s"
    good = [
        VideoItem(str(path.relative_to(video_tree)), path.parent.name)
        for path in sorted(video_tree.glob("*/*.mp4"))
        if str(path.relative_to(video_tree)) not in BAD_VIDEOS
    ]
    extract(video_tree, out, items=good, **TINY)
    return video_tree, out, good


def test_a_finished_cache_is_a_no_op_without_the_backbone(cache, no_backbone):
    videos, out, good = cache
    before = (out / "manifest.json").read_bytes()
    report = extract(videos, out, items=good, **TINY)
    assert report.videos == 0 and report.skipped == GOOD_VIDEOS
    assert (out / "manifest.json").read_bytes() == before  # nothing written
    request = json.loads(before)["source"]["request"]
    assert request == {"backbone": "vit-tiny", "weights": "random", "image_size": 32, "pool_patches": 1, "seed": 0,
                       "dtype": "float16"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"frames": 8}, r"other settings \(sampling.frames: 4 != 8\).*overwrite=True"),  # Python wording
        ({"seed": 1}, r"weights.seed: 0 != 1"),
        ({"dtype": "int8"}, r"tokens.dtype: 'float16' != 'int8'"),
        ({"backbone": "dinov2-s"}, r"backbone.name: 'vit-tiny' != 'dinov2-s'"),
    ],
)
def test_a_settings_mismatch_is_refused_without_the_backbone(cache, no_backbone, change, message):
    videos, out, good = cache
    with pytest.raises(ExtractionError, match=message):
        extract(videos, out, items=good, **{**TINY, **change})


def test_a_request_the_manifest_does_not_record_takes_the_full_path(cache, monkeypatch):
    videos, out, good = cache
    calls = []
    original = engine.load_backbone
    monkeypatch.setattr(engine, "load_backbone", lambda *a, **k: calls.append(a) or original(*a, **k))
    # The same settings reached another way (the image size of the cache given as None would be the model's own):
    # not provable without the model, so the backbone decides, and finds nothing to do.
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["source"]["request"]  # a cache written before source.request (and before manifests were sealed)
    del manifest["manifest_sha256"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = extract(videos, out, items=good, **TINY)
    assert len(calls) == 1 and report.videos == 0 and report.skipped == GOOD_VIDEOS
