"""Split selection, token subsets, batch plans, and the two data paths (in memory / streaming)."""

import multiprocessing
import time

import numpy as np
import pytest
import torch

from step_cache.cache.manifest import TokenLayout
from step_cache.cache.shards import open_shards
from step_cache.synthetic.tokens import write_token_cache
from step_cache.training.data_source import open_token_source
from step_cache.training.frame_order import frame_order, permute_frames, reversed_order, shuffled_order
from step_cache.training.splits import DataError, select_splits, source_video
from step_cache.training.streaming import StreamingTokens
from step_cache.training.token_data import (
    InMemoryTokens,
    batch_plan,
    choose_mode,
    select_tokens,
)


def test_split_column_decides_when_present():
    labels = np.array([0, 1, 0, 1, -1, 0, 1])
    splits = np.array(["train", "", "val", "val", "val", "test", "train"])
    videos = [f"v{i}" for i in range(7)]
    chosen = select_splits(labels, splits, videos, val_fraction=0.5)
    assert chosen.val_source == "cache"
    assert chosen.train.tolist() == [0, 1, 6] and chosen.val.tolist() == [2, 3] and chosen.test.tolist() == [5]


def test_val_fraction_is_stratified_by_video_and_seeded():
    # Class 0: 10 videos, class 1: 5 videos, class 2: 1 video; 3 clips per video; two segments share a file.
    videos, labels = [], []
    for c, count in enumerate([10, 5, 1]):
        for v in range(count):
            for _ in range(3):
                videos.append(f"c{c}/v{v}.mp4")
                labels.append(c)
    videos[-6:-3] = ["c1/v4.mp4#0-10"] * 3  # two segments of one file: must stay together
    videos[-9:-6] = ["c1/v4.mp4#10-20"] * 3
    labels, videos = np.array(labels), np.array(videos)
    chosen = select_splits(labels, np.array([""] * len(labels)), videos, val_fraction=0.2, seed=3)
    assert chosen.val_source == "val-fraction"
    val_videos = {source_video(v) for v in videos[chosen.val]}
    train_videos = {source_video(v) for v in videos[chosen.train]}
    assert not val_videos & train_videos  # every clip of a video on one side
    assert len(chosen.train) + len(chosen.val) == len(labels)
    held_out = [sum(1 for v in val_videos if v.startswith(f"c{c}/")) for c in range(3)]
    # 15 files * 0.2 = 3 held out: 2 of class 0 (10 files), 1 of class 1 (4 files), never the lone class-2 video.
    assert held_out == [2, 1, 0]
    again = select_splits(labels, np.array([""] * len(labels)), videos, val_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again.val, chosen.val)
    others = [select_splits(labels, np.array([""] * len(labels)), videos, 0.2, seed=s).val for s in range(4, 9)]
    assert any(not np.array_equal(o, chosen.val) for o in others)


def test_no_val_when_fraction_is_zero_and_bad_fraction():
    chosen = select_splits(np.array([0, 1]), np.array(["", ""]), ["a", "b"], val_fraction=0.0)
    assert chosen.val_source == "none" and len(chosen.val) == 0
    with pytest.raises(DataError, match="val_fraction"):
        select_splits(np.array([0]), np.array([""]), ["a"], val_fraction=1.0)


def test_token_subsets():
    layout = TokenLayout(cls_tokens=1, grid=(2, 3), dim=8)
    tokens = np.arange(2 * 3 * 7 * 8).reshape(2, 3, 7, 8)
    cls, patches, every = (select_tokens(layout, s) for s in ("cls", "patches", "all"))
    assert (cls.tokens_per_frame, cls.cls_index) == (1, 0)
    assert (patches.tokens_per_frame, patches.cls_index) == (6, None)
    assert (every.tokens_per_frame, every.cls_index) == (7, 0)
    np.testing.assert_array_equal(patches.apply(tokens), tokens[:, :, 1:])
    np.testing.assert_array_equal(cls.apply(tokens), tokens[:, :, :1])
    with pytest.raises(DataError, match="stores no CLS token"):
        select_tokens(TokenLayout(cls_tokens=0, grid=(2, 2), dim=8), "cls")
    with pytest.raises(DataError, match="unknown token subset 'frames'"):
        select_tokens(layout, "frames")


def test_batch_plan_is_keyed_by_seed_and_epoch():
    indices = np.arange(10, 33)
    plan = batch_plan(indices, 5, shuffle=True, seed=1, epoch=2)
    assert [len(b) for b in plan] == [5, 5, 5, 5, 3]
    assert sorted(np.concatenate(plan).tolist()) == indices.tolist()
    same = batch_plan(indices, 5, shuffle=True, seed=1, epoch=2)
    assert all(np.array_equal(a, b) for a, b in zip(plan, same, strict=True))
    other_epoch = np.concatenate(batch_plan(indices, 5, shuffle=True, seed=1, epoch=3))
    assert not np.array_equal(np.concatenate(plan), other_epoch)
    assert np.concatenate(batch_plan(indices, 5, shuffle=False)).tolist() == indices.tolist()


def test_memory_and_streaming_give_identical_batches(tmp_path):
    write_token_cache(tmp_path, videos_per_class=10, clips_per_shard=7)  # 20 clips over 3 shards
    shards = open_shards(tmp_path)
    selection = select_tokens(shards.layout, "patches")
    indices = np.array([0, 3, 4, 5, 8, 9, 10, 11, 12, 13, 15, 19])  # some clips of every shard, not all
    memory = InMemoryTokens(shards, indices, selection, shards.labels)
    assert memory.nbytes == len(indices) * 4 * 4 * 16 * 2  # float16 kept, CLS dropped
    streaming = StreamingTokens(shards, selection, shards.labels, workers=1)
    plan = batch_plan(indices, 5, shuffle=True, seed=0, epoch=0)
    pairs = list(zip(memory.batches(plan), streaming.batches(plan), strict=True))
    assert len(pairs) == 3
    for (tokens_a, labels_a, batch_a), (tokens_b, labels_b, batch_b) in pairs:
        assert tokens_a.dtype == torch.float16 and tokens_a.shape[1:] == (4, 4, 16)
        assert torch.equal(tokens_a, tokens_b) and torch.equal(labels_a, labels_b)
        np.testing.assert_array_equal(batch_a, batch_b)
        expected = shards.read_tokens(batch_a)[:, :, 1:]
        np.testing.assert_array_equal(tokens_a.numpy(), expected)
    with pytest.raises(DataError, match="was not loaded"):
        next(memory.batches([np.array([1])]))


def streaming_children() -> set[int]:
    return {process.pid for process in multiprocessing.active_children()}


def test_streaming_workers_persist_across_passes_and_stop_on_close(tmp_path):
    """Epochs and evaluation passes reuse the reader processes (and their open files); every pass still yields
    exactly the in-memory batches, also a pass started while another is unfinished."""
    write_token_cache(tmp_path, videos_per_class=10, clips_per_shard=7)
    shards = open_shards(tmp_path)
    selection = select_tokens(shards.layout)
    indices = np.arange(len(shards))
    memory = InMemoryTokens(shards, indices, selection, shards.labels)
    streaming = StreamingTokens(shards, selection, shards.labels, workers=2)
    before = streaming_children()

    def same(plan, batches):
        expected = list(memory.batches(plan))
        assert len(batches) == len(expected)
        for (tokens_a, labels_a, batch_a), (tokens_b, labels_b, batch_b) in zip(expected, batches, strict=True):
            assert torch.equal(tokens_a, tokens_b) and torch.equal(labels_a, labels_b)
            np.testing.assert_array_equal(batch_a, batch_b)

    workers = None
    for epoch in range(3):
        plan = batch_plan(indices, 3, shuffle=True, seed=0, epoch=epoch)
        same(plan, list(streaming.batches(plan)))
        alive = streaming_children() - before
        assert len(alive) == 2 and alive == (workers or alive)  # the same two processes after every pass
        workers = alive
    evaluation = batch_plan(indices[::2], 4, shuffle=False)
    same(evaluation, list(streaming.batches(evaluation)))
    assert streaming_children() - before == workers

    unfinished = streaming.batches(batch_plan(indices, 5, shuffle=False))
    first = next(unfinished)
    same(evaluation, list(streaming.batches(evaluation)))  # a second pass meanwhile: its own loader
    same(batch_plan(indices, 5, shuffle=False), [first, *unfinished])
    same(evaluation, list(streaming.batches(evaluation)))
    assert streaming_children() - before == workers

    streaming.close()
    deadline = time.monotonic() + 10
    while streaming_children() & workers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not streaming_children() & workers
    same(evaluation, list(streaming.batches(evaluation)))  # a closed source starts new readers on demand
    streaming.close()


def test_auto_mode_follows_the_memory_budget(tmp_path):
    assert choose_mode("auto", 10, 0.5) == "memory"
    assert choose_mode("auto", 1 << 60, 0.5) == "streaming"
    assert choose_mode("streaming", 10) == "streaming"
    with pytest.raises(DataError, match="unknown data mode"):
        choose_mode("disk", 10)
    write_token_cache(tmp_path, videos_per_class=2)
    shards = open_shards(tmp_path)
    source = open_token_source(shards, np.arange(4), select_tokens(shards.layout), shards.labels)
    assert source.mode == "memory"


def test_frame_orders():
    assert reversed_order(4).tolist() == [3, 2, 1, 0]
    shuffled = shuffled_order(8)
    assert sorted(shuffled.tolist()) == list(range(8))
    assert shuffled.tolist() not in (list(range(8)), list(range(8))[::-1])
    np.testing.assert_array_equal(shuffled, shuffled_order(8))  # fixed seed
    tokens = torch.arange(2 * 3 * 1 * 1).reshape(2, 3, 1, 1)
    assert permute_frames(tokens, reversed_order(3))[0, :, 0, 0].tolist() == [2, 1, 0]
    assert permute_frames(tokens, frame_order("original", 3)) is tokens
    with pytest.raises(ValueError, match="not a permutation"):
        permute_frames(tokens, np.array([0, 0, 1]))


def test_splits_do_not_depend_on_the_order_clips_were_written_in():
    from step_cache.training.splits import select_splits

    videos = np.array([f"c/{i}.mp4" for i in range(20)])
    labels = np.arange(20) % 2
    splits = np.array([""] * 20)
    order = np.random.default_rng(0).permutation(20)  # the same clips, written in another order
    a = select_splits(labels, splits, videos, 0.25, seed=3)
    b = select_splits(labels[order], splits[order], videos[order], 0.25, seed=3)
    for name in ("train", "val"):
        assert videos[getattr(a, name)].tolist() == videos[order][getattr(b, name)].tolist()


def test_held_out_videos_do_not_depend_on_segment_order_when_labels_tie():
    from step_cache.training.splits import select_splits

    # Each source video has one "open" and one "close" segment: a tie for its label, which must not be decided
    # by whichever segment happened to be written first.
    videos = np.array([f"v{v}.mp4#{s * 10}-{s * 10 + 10}" for v in range(12) for s in range(2)])
    labels = np.array([(v + s) % 2 for v in range(12) for s in range(2)])
    splits = np.array([""] * len(videos))
    swapped = np.arange(len(videos)).reshape(-1, 2)[:, ::-1].ravel()  # second segment of each video first
    a = select_splits(labels, splits, videos, 0.25, seed=5)
    b = select_splits(labels[swapped], splits[swapped], videos[swapped], 0.25, seed=5)
    assert len(a.val) > 0
    assert sorted(videos[a.val]) == sorted(videos[swapped][b.val])


@pytest.mark.parametrize("mode", ["memory", "streaming"])
@pytest.mark.parametrize("copy", [True, False], ids=["cls-copy", "old-cache"])
def test_a_cls_selection_reads_only_the_cls_bytes_and_old_caches_slice(tmp_path, monkeypatch, mode, copy):
    """--tokens cls (and the linear probe's auto) reads the CLS copy alone, in memory and streaming; a cache
    without the copy (before format 5) slices the tokens as before; both give the same values."""
    import step_cache.cache.shards as shards_module
    from step_cache.cache.manifest import read_manifest, write_manifest

    write_token_cache(tmp_path, videos_per_class=6, clips_per_shard=5)
    if not copy:
        manifest = read_manifest(tmp_path)
        manifest.storage.pop("cls_copy")
        write_manifest(tmp_path, manifest)
    expected = open_shards(tmp_path).read_tokens(np.arange(12))[:, :, :1]
    datasets = []  # the datasets read, through HDF5 or past it (raw_chunks)
    original, original_raw = shards_module.read_rows, shards_module.read_rows_raw
    monkeypatch.setattr(
        shards_module,
        "read_rows",
        lambda dataset, *args, **kw: datasets.append(dataset.name) or original(dataset, *args, **kw),
    )
    monkeypatch.setattr(
        shards_module,
        "read_rows_raw",
        lambda handle, chunks, *args: datasets.append(chunks.name) or original_raw(handle, chunks, *args),
    )
    shards = open_shards(tmp_path)
    selection = select_tokens(shards.layout, "cls")
    assert selection.part == "cls" and select_tokens(shards.layout, "patches").part == "all"
    indices = np.arange(len(shards))
    source = open_token_source(shards, indices, selection, shards.labels, mode=mode, workers=0)
    assert source.mode == mode
    plan = batch_plan(indices, 5, shuffle=True, seed=1)
    for (tokens, _, batch), wanted in zip(source.batches(plan), plan, strict=True):
        assert np.asarray(batch).tolist() == wanted.tolist()
        np.testing.assert_array_equal(tokens.numpy(), expected[wanted])
    assert datasets and set(datasets) == ({"/cls"} if copy else {"/tokens"})
