"""``train-probe --layers``: one stored layer, or several concatenated along the channels, read from a cache of
``extract --layers``; a single-layer run on a multi-layer cache is the run on a cache of that layer alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY

from step_cache import extract, open_shards
from step_cache.training.evaluation import evaluate
from step_cache.training.splits import DataError
from step_cache.training.token_data import InMemoryTokens, StreamingTokens, select_tokens
from step_cache.training.trainer import train_probe

OPTIONS = {**TINY, "batch_size": 4, "clips": 2}
TRAIN = {"epochs": 2, "batch_size": 4, "progress": False, "data": "memory"}


@pytest.fixture(scope="module")
def caches(_video_tree, tmp_path_factory):
    root = tmp_path_factory.mktemp("layer-caches")
    videos = _video_tree
    extract(videos, root / "three", layers="9,10,11", **OPTIONS)
    extract(videos, root / "ten", layers="10", **OPTIONS)
    extract(videos, root / "plain", **OPTIONS)
    return root


def weights(run_dir):
    return torch.load(run_dir / "best.pt", weights_only=True)


@pytest.mark.parametrize("probe", ["linear", "attentive"])
def test_one_layer_of_a_multi_layer_cache_trains_as_a_cache_of_that_layer_alone(caches, tmp_path, probe):
    a = train_probe(caches / "three", probe, tmp_path / "a", layers="10", **TRAIN)
    b = train_probe(caches / "ten", probe, tmp_path / "b", **TRAIN)  # its only layer: --layers last
    for key, value in weights(tmp_path / "a").items():
        assert torch.equal(value, weights(tmp_path / "b")[key]), key
    assert a.metrics["top1"] == b.metrics["top1"] and a.metrics["loss"] == b.metrics["loss"]
    # the last stored block of a multi-layer cache is what a plain cache holds
    train_probe(caches / "three", probe, tmp_path / "c", **TRAIN)
    train_probe(caches / "plain", probe, tmp_path / "d", **TRAIN)
    for key, value in weights(tmp_path / "c").items():
        assert torch.equal(value, weights(tmp_path / "d")[key]), key


def test_concatenated_layers_are_each_tokens_layers_side_by_side(caches):
    shards = open_shards(caches / "three")
    rows = np.arange(len(shards))
    stored = shards.read_tokens(rows)  # (n, 3, T, P, D)
    selection = select_tokens(shards.layout, "all", "concat:9,11")
    assert selection.layers == (0, 2) and selection.channels == 2
    expected = np.concatenate([stored[:, 0], stored[:, 2]], axis=-1)  # (n, T, P, 2D): block 9's D, then 11's
    labels = np.zeros(len(shards), np.int64)
    for source in (InMemoryTokens(shards, rows, selection, labels), StreamingTokens(shards, selection, labels, 0)):
        tokens = torch.cat([t for t, _, _ in source.batches([rows[:5], rows[5:]])])
        np.testing.assert_array_equal(tokens.numpy(), expected)
    cls = select_tokens(shards.layout, "cls", "concat:last2")  # DINOv2's n_last_blocks = 2 input, per frame
    tokens = next(InMemoryTokens(shards, rows, cls, labels).batches([rows]))[0]
    np.testing.assert_array_equal(tokens.numpy(), np.concatenate([stored[:, 1, :, :1], stored[:, 2, :, :1]], axis=-1))


def test_a_concat_run_records_its_layers_and_evaluates(caches, tmp_path):
    result = train_probe(caches / "three", "linear", tmp_path / "run", layers="concat:last2", **TRAIN)
    record = __import__("json").loads((tmp_path / "run" / "config.json").read_text())
    assert record["data"]["tokens"]["layers"] == [10, 11] and record["data"]["dim"] == 2 * 192
    assert record["config"]["layers"] == "concat:last2"
    assert evaluate(tmp_path / "run", caches / "three")["top1"] == result.metrics["top1"]  # the headline split


def test_layer_choices_a_cache_cannot_give_are_refused(caches, tmp_path):
    plain, three = open_shards(caches / "plain").layout, open_shards(caches / "three").layout
    with pytest.raises(DataError, match="--layers 10: this cache holds the last block only"):
        select_tokens(plain, "all", "10")
    with pytest.raises(DataError, match=r"--layers 8: block\(s\) \[8\] not stored once each; the cache stores \[9, 10"):
        select_tokens(three, "all", "8")
    with pytest.raises(DataError, match="--layers 9,11: several blocks are read as concat:9,11"):
        select_tokens(three, "all", "9,11")
    with pytest.raises(DataError, match="--layers concat:last5: the cache stores 3 layers"):
        select_tokens(three, "all", "concat:last5")
    with pytest.raises(DataError, match="linear probe's avgpool is not supported"):
        train_probe(caches / "three", "linear", tmp_path / "x", layers="concat:last2", probe_options={"avgpool": True},
                    tokens="all", **TRAIN)  # fmt: skip
