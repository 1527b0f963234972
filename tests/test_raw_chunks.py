"""Reads past HDF5 (step_cache.cache.raw_chunks): the uncompressed chunks of a cache are read with preadv straight
into the result, the same bytes HDF5 reads, for every layout (float16, int8 and its scales, a layer axis and a
subset of it, the CLS copy with many clips per chunk), scattered and repeated clips, reads split by the system;
where the chunks cannot be read raw (a filter, a chunk never written, a slice of the tokens) HDF5 reads them."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_layer_format import layout, write_cache

import step_cache.cache.raw_chunks as raw_chunks
import step_cache.cache.shards as shards_module
from step_cache.cache.read_ahead import ChunkRanges
from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache

SCATTERED = [9, 0, 3, 4, 5, 17, 4, 12, 11, 1]  # across shards, a consecutive stretch, a clip asked twice


def through_hdf5(monkeypatch, read):
    with monkeypatch.context() as patch:
        patch.setenv("STEP_CACHE_READ_VIA_HDF5", "1")
        return read()


def hdf5_forbidden(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("read through HDF5")

    monkeypatch.setattr(shards_module, "read_rows", refuse)


@pytest.mark.parametrize(
    ("token_layout", "layers", "part"),
    [
        (layout(), None, "all"),
        (layout(dtype="int8"), None, "all"),  # values and their scales
        (layout(layers=(9, 10, 11)), None, "all"),
        (layout(layers=(9, 10, 11)), [2, 0], "all"),  # some layers, in another order
        (layout(layers=(9, 10, 11), dtype="int8"), [1], "all"),
        (layout(layers=(9, 10, 11)), [0, 2], "cls"),  # the CLS copy: 64 clips per chunk
        (layout(dtype="int8", cls_tokens=2), None, "cls"),
    ],
)
def test_raw_reads_give_the_bytes_hdf5_reads(tmp_path, monkeypatch, token_layout, layers, part):
    write_cache(tmp_path, token_layout, clips=(11, 9))
    shards = open_shards(tmp_path)
    expected = through_hdf5(monkeypatch, lambda: shards.read_stored(SCATTERED, layers, part, advise=True))
    expected_whole = through_hdf5(monkeypatch, lambda: shards.read_shard_stored(1, layers, part))[0]
    shards.close()
    hdf5_forbidden(monkeypatch)
    values, scales = shards.read_stored(SCATTERED, layers, part, advise=True)
    np.testing.assert_array_equal(values, expected[0])
    assert (scales is None) == (expected[1] is None)
    if scales is not None:
        np.testing.assert_array_equal(scales, expected[1])
    whole = shards.read_shard_stored(1, layers, part)[0]  # a whole shard, as loading into memory reads it
    np.testing.assert_array_equal(whole, expected_whole)


def test_a_read_into_a_given_buffer_and_reads_the_system_splits(tmp_path, monkeypatch):
    write_token_cache(tmp_path, videos_per_class=10, clips_per_shard=5)
    shards = open_shards(tmp_path)
    expected = through_hdf5(monkeypatch, lambda: shards.read_stored(SCATTERED)[0])
    calls = []
    real = raw_chunks.os.preadv

    def short_reads(fd, buffers, offset):  # at most 100 bytes a call, as a read past 2 GiB comes back short
        calls.append(len(buffers))
        room = [memoryview(b)[: max(0, 100 - sum(len(x) for x in buffers[:i]))] for i, b in enumerate(buffers)]
        return real(fd, [r for r in room if len(r)], offset)

    monkeypatch.setattr(raw_chunks.os, "preadv", short_reads)
    hdf5_forbidden(monkeypatch)
    out = np.full_like(expected, 7)
    shards.read_stored(SCATTERED, out=out)
    np.testing.assert_array_equal(out, expected)
    assert len(calls) > len(SCATTERED)


def test_clips_back_to_back_on_disk_and_in_the_batch_are_one_read(tmp_path, monkeypatch):
    write_token_cache(tmp_path, videos_per_class=10, clips_per_shard=20)
    shards = open_shards(tmp_path)
    calls = []
    real = raw_chunks.os.preadv
    monkeypatch.setattr(raw_chunks.os, "preadv", lambda fd, b, o: calls.append(len(b)) or real(fd, b, o))
    shards.read_stored([2, 3, 4, 7, 6])
    # clips 2..4 into positions 0..2: one buffer; 6 and 7 lie back to back on disk but land in reverse order
    assert sorted(calls) == [1, 2]


def test_a_truncated_shard_is_read_through_hdf5_which_reports_it(tmp_path, monkeypatch):
    write_token_cache(tmp_path, videos_per_class=4, clips_per_shard=40)
    shards = open_shards(tmp_path)
    monkeypatch.setattr(raw_chunks.os, "preadv", lambda fd, buffers, offset: 0)  # the file ends early
    used = []
    real = shards_module.read_rows
    monkeypatch.setattr(shards_module, "read_rows", lambda *a, **k: used.append(1) or real(*a, **k))
    values = shards.read_stored([3, 1])[0]
    assert used and values.shape[0] == 2  # HDF5 read it (the file is whole here, so it succeeds)


def test_only_chunks_that_hold_c_ordered_rows_are_read_raw(tmp_path):
    shape = (4, 2, 5, 3)
    with h5py.File(tmp_path / "f.h5", "w") as handle:
        plain = handle.create_dataset("plain", shape, "f2", chunks=(1, 2, 5, 3))
        plain[:3] = 1  # the last chunk is never written
        handle.create_dataset("gzip", shape, "f2", chunks=(1, 2, 5, 3), compression="gzip", data=np.ones(shape))
        handle.create_dataset("shuffled", shape, "f2", chunks=(1, 2, 5, 3), shuffle=True, data=np.ones(shape))
        handle.create_dataset("big_endian", shape, ">f2", chunks=(1, 2, 5, 3), data=np.ones(shape))
        handle.create_dataset("split_frames", shape, "f2", chunks=(1, 1, 5, 3), data=np.ones(shape))
        handle.create_dataset("layered", shape, "f2", chunks=(2, 1, 5, 3), data=np.ones(shape))
        assert ChunkRanges(plain, layered=False).row_bytes == 2 * 5 * 3 * 2
        assert ChunkRanges(handle["layered"], layered=True).row_bytes == 5 * 3 * 2  # one layer of one row
        for name in ("gzip", "shuffled", "big_endian", "split_frames"):
            assert ChunkRanges(handle[name], layered=False).row_bytes is None, name
        out = np.zeros((1, 2, 5, 3), np.float16)
        assert raw_chunks.read_rows_raw(handle, ChunkRanges(plain, False), [(1, 1, 0)], None, out)
        assert (out == 1).all()
        assert not raw_chunks.read_rows_raw(handle, ChunkRanges(plain, False), [(3, 1, 0)], None, out)  # unwritten
