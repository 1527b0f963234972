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
from step_cache.training.streaming import StreamingTokens
from step_cache.training.token_data import InMemoryTokens, select_tokens
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
    with pytest.raises(DataError, match="layers='10': this cache holds the last block only"):
        select_tokens(plain, "all", "10")
    with pytest.raises(DataError, match=r"layers='8': block\(s\) \[8\] not stored once each; the cache stores \[9, 10"):
        select_tokens(three, "all", "8")
    with pytest.raises(DataError, match="layers='9,11': several blocks are read as concat:9,11"):
        select_tokens(three, "all", "9,11")
    with pytest.raises(DataError, match="layers='concat:last5': the cache stores 3 layers"):
        select_tokens(three, "all", "concat:last5")


def test_a_layer_mix_starts_as_the_layers_mean_and_learns_its_weights(caches, tmp_path):
    from step_cache.probes import build_probe
    from step_cache.probes.layer_inputs import LayerMix

    shards = open_shards(caches / "three")
    rows = np.arange(len(shards))
    selection = select_tokens(shards.layout, "all", "mix")
    assert selection.layers == (0, 1, 2) and selection.mix and selection.probe_dim(192) == 192
    tokens = next(InMemoryTokens(shards, rows, selection, np.zeros(len(rows), np.int64)).batches([rows]))[0]
    probe = build_probe("linear", dim=192, num_classes=3, frames=4, tokens_per_frame=5, cls_index=0)
    mix = LayerMix(probe, layers=3, dim=192)
    stored = torch.from_numpy(shards.read_tokens(rows, np.float32))  # (n, 3, T, P, D)
    # softmax(0, 0, 0) = 1/3 each, gain 1: the mean of the three layers (float32 sums of three products)
    torch.testing.assert_close(mix.mixed(tokens), stored.mean(dim=1), rtol=2e-7, atol=2e-7)
    with torch.no_grad():
        mix.mix_logits.copy_(torch.tensor([0.0, 0.0, 50.0]))
        mix.mix_gain.fill_(2.0)
    torch.testing.assert_close(mix.mixed(tokens), 2 * stored[:, 2], rtol=1e-6, atol=1e-6)  # all weight on block 11
    result = train_probe(caches / "three", "linear", tmp_path / "mix", layers="mix", seeds=2, **TRAIN)
    state = weights(tmp_path / "mix")
    assert state["mix_logits"].shape == (3,) and not torch.equal(state["mix_logits"], torch.zeros(3))
    assert evaluate(tmp_path / "mix", caches / "three")["top1"] == pytest.approx(result.metrics["top1"])


def test_a_sweep_searches_the_layer_and_stacks_single_layers_over_one_read(caches, tmp_path):
    from step_cache.sweeps.space import build_space
    from step_cache.sweeps.study import run_sweep
    from step_cache.training.config import make_config
    from step_cache.training.stacking.grouping import group_by_shape, stack_reading

    layout = open_shards(caches / "three").layout
    configs = [make_config("linear", {**TRAIN, "layers": layers}) for layers in ("11", "9", "mix", "last", "10")]
    assert group_by_shape(configs) == [[0, 1, 3, 4], [2]]  # one layer each: one stack; the mix apart
    reading, picks = stack_reading([configs[i] for i in (0, 1, 3, 4)], layout)
    assert reading.layers == "concat:9,10,11" and picks == [2, 0, 2, 1]  # each batch read once, for all four
    space = build_space("linear", ["layers=9,10,11,mix,concat:last2"])
    result = run_sweep(caches / "three", "linear", tmp_path / "s", space=space, trials=8, parallel=5, sampler="grid",
                       retrain=False, plots=False, **TRAIN)  # fmt: skip
    rows = {r["params"]["layers"]: r for r in result.rows}
    assert sorted(rows) == ["10", "11", "9", "concat:last2", "mix"] and all(
        r["state"] == "COMPLETE" for r in rows.values()
    )
    for layer in ("9", "11"):  # a member of the shared stack trains as the run of its layer alone
        single = train_probe(caches / "three", "linear", tmp_path / layer, layers=layer, **TRAIN)
        assert rows[layer]["metrics"]["top1"] == single.metrics["top1"]
        assert rows[layer]["metrics"]["loss"] == pytest.approx(single.metrics["loss"], rel=1e-5)


def test_the_linear_probe_with_avgpool_on_concatenated_layers_reads_dinov2s_linear_input(caches, tmp_path):
    """dinov2/eval/linear.py, create_linear_input(x_tokens_list, use_n_blocks, use_avgpool): the class tokens of the
    last n blocks concatenated, then the mean of the last block's patch tokens (per image: here per frame)."""
    from step_cache.probes.layer_inputs import Dinov2LinearInput, build_layered_probe

    shards = open_shards(caches / "three")
    rows = np.arange(len(shards))
    selection = select_tokens(shards.layout, "all", "concat:last2")
    tokens = next(InMemoryTokens(shards, rows, selection, np.zeros(len(rows), np.int64)).batches([rows]))[0].float()
    stored = torch.from_numpy(shards.read_tokens(rows, np.float32))  # (n, 3, T, P, D)
    x_tokens_list = [(stored[:, layer, :, 1:], stored[:, layer, :, 0]) for layer in (1, 2)]  # (patches, class token)
    output = torch.cat([class_token for _, class_token in x_tokens_list], dim=-1)
    output = torch.cat((output, torch.mean(x_tokens_list[-1][0], dim=-2)), dim=-1)  # (n, T, 3D)
    probe = build_layered_probe("linear", layer_dim=192, layers=2, mix=False, num_classes=3, frames=4,
                                tokens_per_frame=5, cls_index=0, avgpool=True)  # fmt: skip
    assert isinstance(probe, Dinov2LinearInput) and probe.probe.head.in_features == 3 * 192
    torch.testing.assert_close(probe.features(tokens)[:, :, 0], output, rtol=0, atol=0)
    result = train_probe(caches / "three", "linear", tmp_path / "dino", layers="concat:last2", tokens="all",
                         probe_options={"avgpool": True}, **TRAIN)  # fmt: skip
    assert evaluate(tmp_path / "dino", caches / "three")["top1"] == result.metrics["top1"]


def test_tokens_mode_puts_the_layers_tokens_one_after_the_other_as_vjepa2_does(caches, tmp_path):
    """V-JEPA 2 (evals/video_classification_frozen/modelcustom/vit_encoder_multiclip_multilevel.py, ClipAggregation):
    the encoder returns each out_layer's normalised tokens (B, N, D) and ``torch.cat(outputs, dim=1)`` puts them one
    after the other; its attentive probe attends over all of them at once."""
    from step_cache.probes import build_probe

    shards = open_shards(caches / "three")
    rows = np.arange(len(shards))
    selection = select_tokens(shards.layout, "all", "tokens:10,11")
    assert selection.probe_tokens_per_frame == 10 and selection.probe_dim(192) == 192
    tokens = next(InMemoryTokens(shards, rows, selection, np.zeros(len(rows), np.int64)).batches([rows]))[0].float()
    stored = torch.from_numpy(shards.read_tokens(rows, np.float32))  # (n, 3, T, P, D)
    torch.testing.assert_close(tokens, torch.cat([stored[:, 1], stored[:, 2]], dim=2), rtol=0, atol=0)
    # V-JEPA 2's order: layer after layer, each its T x P tokens time-major; one sequence of 2 x T x P tokens
    vjepa2 = torch.cat([stored[:, 1].flatten(1, 2), stored[:, 2].flatten(1, 2)], dim=1)
    torch.manual_seed(0)
    ours = build_probe("attentive", dim=192, num_classes=3, frames=4, tokens_per_frame=10, cls_index=0)
    theirs = build_probe("attentive", dim=192, num_classes=3, frames=1, tokens_per_frame=vjepa2.shape[1], cls_index=0)
    theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():  # the attentive pooler sees the same set of tokens: the same logits up to summation order
        torch.testing.assert_close(ours.eval()(tokens), theirs.eval()(vjepa2[:, None]), rtol=1e-5, atol=1e-5)
    result = train_probe(caches / "three", "attentive", tmp_path / "run", layers="tokens:last2", **TRAIN)
    record = __import__("json").loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert record["tokens"]["layers"] == [10, 11] and record["tokens"]["along"] == "tokens" and record["dim"] == 192
    assert evaluate(tmp_path / "run", caches / "three")["top1"] == result.metrics["top1"]
    with pytest.raises(
        DataError,
        match=r"layers='tokens:last2' \(the layers' tokens one after the other\) with token_drop=: refused, as it "
        r"would drop among the first layer's tokens only; use concat:, mix or one layer with it$",
    ):
        train_probe(caches / "three", "attentive", tmp_path / "x", layers="tokens:last2", token_drop=0.5, **TRAIN)


def test_a_cache_without_layers_takes_its_own_block_index(caches, tmp_path):
    plain = open_shards(caches / "plain")
    assert select_tokens(plain.layout, "all", "11", depth=12).layers is None  # vit-tiny: blocks 0..11
    assert select_tokens(plain.layout, "all", "-1", depth=12).layers is None
    with pytest.raises(DataError, match=r"layers='10': this cache holds the last block only \(block 11, the last of"):
        select_tokens(plain.layout, "all", "10", depth=12)
    train_probe(caches / "plain", "linear", tmp_path / "own", layers="11", **TRAIN)  # the depth from its backbone
    train_probe(caches / "plain", "linear", tmp_path / "last", **TRAIN)
    for key, value in weights(tmp_path / "own").items():
        assert torch.equal(value, weights(tmp_path / "last")[key]), key
