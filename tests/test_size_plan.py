"""extract's size estimate (``plan_extract``, ``extract --dry-run``): within 5 % of the cache extract then writes on
the demo dataset (float16; int8 with augmented views; test views with two layers), counted without reading a
video; the read test."""

from pathlib import Path

import pytest

from step_cache.cache.manifest import read_manifest
from step_cache.demo_dataset import make_demo_dataset
from step_cache.extraction.engine import extract, plan_extract
from step_cache.extraction.size_plan import SizeEstimate, read_rate

DEMO = {"backbone": "vit-tiny", "weights": "random", "frames": 8, "image_size": 112, "workers": 0, "progress": False}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(root, per_class=3, num_frames=17, val_fraction=0.34, test_fraction=0.0, progress=False)
    return root / "annotations.csv"


def cache_bytes(out: Path) -> int:
    return sum(path.stat().st_size for path in out.glob("shard-*.h5"))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"dtype": "int8", "views": 1, "shard_size_mb": 0.5},
        {"test_views": "2x2", "layers": "last2"},
        {"test_views": "2x2", "layers": "0,-1", "frame_step": 3},
    ],
    ids=["fp16", "int8-views", "test-views-layers", "frame-step-test-views-layers"],
)
def test_the_estimate_is_within_5_percent_of_the_demo_cache(demo, tmp_path, options):
    out = tmp_path / "cache"
    estimate = plan_extract(None, out, annotations=demo, read_test=False, **DEMO, **options)
    assert not out.exists()  # a dry run writes nothing
    extract(None, out, annotations=demo, **DEMO, **options)
    manifest = read_manifest(out)
    rows = sum(record.clips for record in manifest.shards)
    assert estimate.clips == rows and estimate.videos == manifest.num_videos
    assert manifest.storage["cls_copy"] is True
    assert estimate.clip_bytes == manifest.layout.clip_bytes(8) + manifest.layout.cls_bytes(8)
    assert manifest.layout.layer_count == (2 if "layers" in options else 1)
    assert estimate.shards == len(manifest.shards)  # with test views too: no 1-clip shard for a last small video
    assert abs(estimate.total_bytes / cache_bytes(out) - 1) < 0.05, (estimate.total_bytes, cache_bytes(out))
    resumed = plan_extract(None, out, annotations=demo, read_test=False, **DEMO, **options)
    assert resumed.existing_bytes == cache_bytes(out) and resumed.needed_bytes < 0.05 * cache_bytes(out)


def test_the_summary_and_the_refusal_name_the_figures(tmp_path):
    estimate = SizeEstimate(tmp_path / "out", 10, 20, 3 << 20, 1, 61 << 20, 0, 50 << 20, read_rate=300e6)
    assert not estimate.fits  # 61 MiB + 5 % + 16 MiB of margin > 50 MiB
    assert estimate.refusal() == (
        f"{tmp_path / 'out'}: not enough free space: the cache needs about 61.00 MiB more (20 clips x 3.00 MiB, "
        "61.00 MiB in all) plus a margin of 19.05 MiB, and 50.00 MiB are free; free some space, extract somewhere "
        "else, or pass --force (force=True) to extract what fits"
    )
    text = estimate.summary()
    assert "  clips            20\n" in text and "  cache size       61.00 MiB in 1 shard(s)\n" in text
    assert "NOT enough: extract refuses without --force" in text and "300 MB/s" in text
    assert f"about {61 * 2**20 / 300e6:.1f} s to read every clip once" in text


def test_read_rate_measures_a_file_and_leaves_nothing(tmp_path):
    rate = read_rate(tmp_path / "not" / "yet", size=4 << 20)  # the nearest existing parent
    assert rate is not None and rate > 0
    assert list(tmp_path.iterdir()) == []
