"""The extraction writer thread (step_cache.extraction.write_queue): order kept, everything queued written at close,
the writer's error raised in the main thread, and an extract whose shard writes fail stops with the cache valid."""

from __future__ import annotations

import threading

import pytest
from conftest import GOOD_VIDEOS, TINY

from step_cache import extract, open_shards
from step_cache.cache import shard_file
from step_cache.cache.manifest import read_manifest
from step_cache.cache.writer import ExtractionError
from step_cache.extraction.write_queue import WriteQueue


def test_items_are_handled_in_order_in_another_thread_and_close_drains():
    seen, threads = [], set()

    def handle(item):
        seen.append(item)
        threads.add(threading.current_thread().name)

    writes = WriteQueue(handle, depth=2)
    for i in range(50):
        writes.put(i)
    writes.close()
    assert seen == list(range(50))
    assert threads == {"shard-writer"}
    writes.close()  # idempotent


def test_the_writers_error_reaches_the_main_thread_once_and_later_items_are_dropped():
    seen = []

    def handle(item):
        if item == 3:
            raise OSError(28, "No space left on device")
        seen.append(item)

    writes = WriteQueue(handle, depth=1)
    with pytest.raises(OSError, match="No space left"):
        for i in range(100):
            writes.put(i)
        writes.close()
    writes.close()  # reported once: stopping after the error does not raise it again
    assert seen == [0, 1, 2]


def test_extract_stops_cleanly_when_the_writer_thread_fails(video_tree, tmp_path, monkeypatch):
    """The second video's write fails in the writer thread: the run stops with the usual one-line error, the
    manifest stays readable, and the same command then resumes to every good video, each once."""
    calls = []
    original = shard_file.ShardWriter.append_video

    def failing(self, records):
        calls.append(len(records))
        if len(calls) == 2:  # an I/O error (a full disk has its own stop: tests/test_disk_full.py)
            raise OSError(5, "Input/output error")
        return original(self, records)

    monkeypatch.setattr(shard_file.ShardWriter, "append_video", failing)
    out = tmp_path / "cache"
    with pytest.raises(ExtractionError, match=r"extraction stopped by OSError: .*Input/output error.*re-run the same"):
        extract(video_tree, out, **TINY)
    assert read_manifest(out).shards == []  # the failing shard was dropped, not published half-written
    monkeypatch.setattr(shard_file.ShardWriter, "append_video", original)
    report = extract(video_tree, out, **TINY)
    videos = list(open_shards(out).videos)
    assert report.videos == GOOD_VIDEOS and sorted(set(videos)) == sorted(videos) and len(videos) == GOOD_VIDEOS
