"""Class names bound into the shards (issue 31): a shard's labels index the manifest's ``classes``, and its
``classes_sha256`` attribute ties them to that list, so that swapped class names pass nowhere even without the
manifest's seal, and a shard copied from a cache with other classes is refused; shards written before the
attribute read as before."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest

from step_cache.cache.files import file_sha256
from step_cache.cache.manifest import read_manifest, write_manifest
from step_cache.cache.sealing import SEAL_KEY
from step_cache.cache.shard_file import ShardError
from step_cache.cache.shards import open_shards
from step_cache.cache.verify import verify_cache
from step_cache.synthetic.tokens import write_token_cache

PROBLEM = (
    "its labels index another class list than the manifest's (the manifest's classes were edited, or the shard "
    "comes from a cache with other classes)"
)


@pytest.fixture
def cache(tmp_path):
    write_token_cache(tmp_path / "c", num_classes=2, videos_per_class=3, clips_per_shard=4)
    return tmp_path / "c"


def _refit_manifest(directory, files):
    """Make the manifest list each of ``files`` with its current bytes and checksum, and seal it again: the shard
    check alone is what must catch the problem."""
    manifest = read_manifest(directory)
    manifest.shards = [
        dataclasses.replace(r, bytes=(directory / r.file).stat().st_size, sha256=file_sha256(directory / r.file))
        if r.file in files else r
        for r in manifest.shards
    ]  # fmt: skip
    write_manifest(directory, manifest)


def test_every_shard_carries_the_sha256_of_its_class_list(cache):
    classes = read_manifest(cache).classes
    expected = hashlib.sha256(json.dumps(classes).encode()).hexdigest()
    for path in sorted(cache.glob("shard-*.h5")):
        with h5py.File(path, "r") as handle:
            assert handle.attrs["classes_sha256"] == expected


def test_swapped_class_names_without_the_seal_are_refused(cache):
    path = cache / "manifest.json"
    data = json.loads(path.read_text())
    data["classes"][0], data["classes"][1] = data["classes"][1], data["classes"][0]
    del data[SEAL_KEY]  # the seal would catch the edit: without it, the shards must
    path.write_text(json.dumps(data, indent=2) + "\n")
    with pytest.raises(ShardError) as error:
        open_shards(cache)
    assert str(error.value) == (
        f"{cache / 'shard-00000.h5'}: {PROBLEM}; restore the cache's own manifest or shard, or extract again"
    )
    report = verify_cache(cache)
    assert not report.ok and any(PROBLEM in problem for problem in report.problems)


def test_a_shard_of_a_cache_with_other_classes_is_refused(cache, tmp_path):
    other = tmp_path / "other"
    write_token_cache(other, num_classes=4, videos_per_class=3, clips_per_shard=4)  # same settings, more classes
    shutil.copy(other / "shard-00000.h5", cache / "shard-00000.h5")
    _refit_manifest(cache, {"shard-00000.h5"})
    with pytest.raises(ShardError) as error:
        open_shards(cache)
    assert str(error.value).startswith(f"{cache / 'shard-00000.h5'}: {PROBLEM}; ")


def test_a_shard_written_before_the_attribute_reads_as_before(cache):
    before = open_shards(cache)
    labels = before.labels.copy()
    before.close()
    for path in cache.glob("shard-*.h5"):
        with h5py.File(path, "r+") as handle:
            del handle.attrs["classes_sha256"]
    _refit_manifest(cache, {p.name for p in cache.glob("shard-*.h5")})
    with open_shards(cache) as shards:
        np.testing.assert_array_equal(shards.labels, labels)
    assert verify_cache(cache).ok
