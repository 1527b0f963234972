"""Streamed reads (step_cache.cache.read_ahead, ShardSet.read_stored(out=, advise=), training.streaming): every
chunk a read touches is advised first, at the byte ranges HDF5 stores it, adjacent chunks in one call; the values
are the same whatever the order, duplicates, buffer or advice; the reader count follows the CPU budget and memory."""

from __future__ import annotations

import itertools
import os

import h5py
import numpy as np
import pytest
import torch
from test_layer_format import layout, write_cache

import step_cache.cpu_budget as cpu_budget
import step_cache.training.streaming as streaming
from step_cache.cache import read_ahead
from step_cache.cache.read_ahead import ChunkRanges
from step_cache.cache.selection import read_pieces
from step_cache.cache.shards import open_shards
from step_cache.cpu_budget import ThreadChoice
from step_cache.synthetic.tokens import write_token_cache


def stored_chunks(dataset: h5py.Dataset) -> dict[tuple[int, ...], tuple[int, int]]:
    return {info.chunk_offset: (info.byte_offset, info.size) for info in map(dataset.id.get_chunk_info,
            range(dataset.id.get_num_chunks()))}  # fmt: skip


def test_read_pieces_join_clips_consecutive_on_disk_and_in_the_batch():
    # positions sorted by clip: clips 3, 4, 5 go to positions 0, 1, 2; clip 9 to 4 and clip 10 to 3 (not joined)
    assert read_pieces(np.array([3, 4, 5, 9, 10]), np.array([0, 1, 2, 4, 3])) == [(3, 3, 0), (9, 1, 4), (10, 1, 3)]
    assert read_pieces(np.array([2, 2]), np.array([0, 1])) == [(2, 1, 0), (2, 1, 1)]  # a clip asked twice
    assert read_pieces(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == []


def test_chunk_ranges_are_where_hdf5_stores_each_chunk(tmp_path):
    write_cache(tmp_path, layout(layers=(9, 10, 11)), clips=(70,))
    with h5py.File(next(tmp_path.glob("shard-*.h5")), "r") as handle:
        tokens, cls = ChunkRanges(handle["tokens"], layered=True), ChunkRanges(handle["cls"], layered=True)
        chunks = stored_chunks(handle["tokens"])
        # clips 5 and 6 of layers 0 and 2: one chunk per clip and layer
        wanted = {chunks[(row, layer, 0, 0, 0)] for row in (5, 6) for layer in (0, 2)}
        assert set(tokens.ranges(5, 2, [0, 2])) == wanted
        assert len(list(tokens.ranges(5, 2, None))) == 6  # every layer
        # the CLS copy holds 64 clips per chunk: clips 60..65 touch two chunks of each layer asked
        cls_chunks = stored_chunks(handle["cls"])
        assert set(cls.ranges(60, 6, [1])) == {cls_chunks[(0, 1, 0, 0, 0)], cls_chunks[(64, 1, 0, 0, 0)]}


def test_an_advised_read_asks_for_each_chunk_once_adjacent_ones_merged(tmp_path, monkeypatch):
    write_token_cache(tmp_path, videos_per_class=10, clips_per_shard=20)
    calls = []
    monkeypatch.setattr(read_ahead.os, "posix_fadvise", lambda fd, offset, size, advice: calls.append((offset, size)))
    shards = open_shards(tmp_path)
    plain = shards.read_stored([7, 2, 3, 4, 15])[0]
    assert calls == []  # no advice unless asked
    advised = shards.read_stored([7, 2, 3, 4, 15], advise=True)[0]
    np.testing.assert_array_equal(advised, plain)
    with h5py.File(shards.paths[0], "r") as handle:
        chunks = stored_chunks(handle["tokens"])
    span = [chunks[(row, 0, 0, 0)] for row in range(20)]
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(span[2:5]))  # written back to back
    # clips 2..4 are adjacent on disk: one call for the three; 7 and 15 one each; sorted by offset
    expected = [(span[2][0], span[4][0] + span[4][1] - span[2][0]), span[7], span[15]]
    assert calls == expected
    calls.clear()  # CLS reads: clips 1 and 3 share one 64-clip chunk of the copy, advised once
    shards.read_stored([3, 1], part="cls", advise=True)
    with h5py.File(shards.paths[0], "r") as handle:
        assert calls == [stored_chunks(handle["cls"])[(0, 0, 0, 0)]]


def test_a_batch_over_several_shards_is_advised_before_its_first_read(tmp_path, monkeypatch):
    import step_cache.cache.shards as shards_module

    write_token_cache(tmp_path, videos_per_class=10, clips_per_shard=7)  # 20 clips over 3 shards
    events = []
    advise, read = shards_module.will_need, shards_module.ShardSet._read_rows
    monkeypatch.setattr(shards_module, "will_need", lambda *a: events.append("advise") or advise(*a))
    monkeypatch.setattr(shards_module.ShardSet, "_read_rows", lambda *a: events.append("read") or read(*a))
    shards = open_shards(tmp_path)
    shards.read_stored([15, 1, 8], advise=True)
    assert events == ["advise"] * 3 + ["read"] * 3


def test_read_into_a_given_buffer_in_any_order_with_duplicates(tmp_path):
    write_token_cache(tmp_path, videos_per_class=10, clips_per_shard=7)  # 20 clips over 3 shards
    shards = open_shards(tmp_path)
    indices = np.array([13, 2, 3, 19, 2, 4, 8, 7, 14])
    expected = np.stack([shards.read_stored([i])[0][0] for i in indices])
    out = np.full_like(expected, np.nan)
    values, scales = shards.read_stored(indices, out=out, advise=True)
    assert values is out and scales is None
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="out: expected a C-contiguous"):
        shards.read_stored(indices, out=np.empty((len(indices), 1), np.float16))


def test_reader_count_follows_the_cpu_budget_and_memory(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for budget, on_cpu, on_cuda in [(1, 2, 1), (2, 2, 1), (3, 2, 1), (8, 4, 6), (64, 32, 62)]:
        monkeypatch.setattr(cpu_budget, "_applied", ThreadChoice(budget, "test"))
        assert (streaming.reader_count(cpu), streaming.reader_count(cuda)) == (on_cpu, on_cuda)
    monkeypatch.setattr(streaming, "available_memory", lambda: 16 << 30)
    # 4 GiB (a quarter of 16) holds 8 batches of 512 MiB read ahead: 2 readers of PREFETCH = 4 batches each
    assert streaming.PREFETCH == 4 and streaming.reader_count(cpu, batch_bytes=512 << 20) == 2
    assert streaming.reader_count(cpu, batch_bytes=1 << 20) == 32  # small batches: the CPU rule
    assert streaming.reader_count(cuda, batch_bytes=8 << 30) == 1  # never fewer than one


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux only")
def test_streamed_batches_are_advised_in_the_reader(tmp_path):
    """A streamed pass reads with advice (in the calling process with workers=0, where the monkeypatch holds)."""
    from step_cache.training.token_data import batch_plan, select_tokens

    write_token_cache(tmp_path, videos_per_class=6, clips_per_shard=5)
    shards = open_shards(tmp_path)
    seen = []
    original = shards.read_stored
    shards.read_stored = lambda *a, **kw: seen.append(kw.get("advise")) or original(*a, **kw)
    source = streaming.StreamingTokens(shards, select_tokens(shards.layout), shards.labels, workers=0)
    plan = batch_plan(np.arange(len(shards)), 4, shuffle=True)
    batches = list(source.batches(plan))
    assert len(batches) == len(plan) and seen == [True] * len(plan)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_batches_from_a_reader_process_come_in_shared_memory_with_the_in_memory_values(tmp_path, monkeypatch, dtype):
    """A reader process reads (float) or dequantizes (int8) each batch straight into shared memory; the values are
    the in-memory source's, bit for bit, for whole clips and for the CLS copy."""
    from test_quantize import write_int8_cache

    from step_cache.training.token_data import InMemoryTokens, batch_plan, select_tokens

    if dtype == "int8":
        write_int8_cache(tmp_path, clips=9)
    else:
        write_token_cache(tmp_path, videos_per_class=5, clips_per_shard=4)
    shards = open_shards(tmp_path)
    rows = np.arange(len(shards))
    for subset in ("all", "cls"):
        selection = select_tokens(shards.layout, subset)
        reader = streaming._BatchReader(shards, selection, torch.as_tensor(shards.labels))
        with monkeypatch.context() as inside:  # as in a reader process: the batch is made in shared memory
            inside.setattr(torch.utils.data, "get_worker_info", lambda: object())
            assert reader[np.array([3, 1])][0].is_shared()
        assert not reader[np.array([3, 1])][0].is_shared()  # in the calling process (workers=0): plain memory
        memory = InMemoryTokens(shards, rows, selection, shards.labels)
        stream = streaming.StreamingTokens(shards, selection, shards.labels, workers=1)
        plan = batch_plan(rows, 4, shuffle=True, seed=2)
        for (a, labels_a, _), (b, labels_b, _) in zip(memory.batches(plan), stream.batches(plan), strict=True):
            assert b.dtype == torch.float16 and torch.equal(a, b) and torch.equal(labels_a, labels_b)
        stream.close()
