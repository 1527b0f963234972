"""Linear members whose inputs nest (``last`` / ``concat:lastN`` x ``avgpool``, no LayerNorm) train as one stack of
masked wide heads (``training/stacking/nested.py``, ``probes/nested_linear.py``): DINOv2's whole linear grid reads
each batch once, and each member trains as its config alone."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY

from step_cache import extract, open_shards
from step_cache.probes.nested_linear import NestedLinear
from step_cache.training.config import make_config
from step_cache.training.stacking import group_by_shape, train_stacked
from step_cache.training.stacking.grouping import stack_reading
from step_cache.training.stacking.nested import NestedPlan, last_blocks, nests
from step_cache.training.trainer import train_probe

TRAIN = {"epochs": 2, "batch_size": 4, "progress": False, "data": "memory", "optimizer": "sgd", "weight_decay": 0.0,
         "warmup_epochs": 0}  # fmt: skip
KINDS = [("last", False), ("last", True), ("concat:last4", False), ("concat:last4", True)]  # DINOv2's four widths


def _config(layers: str, avgpool: bool, lr: float = 0.1, **extra):
    options = {"layer_norm": False, "avgpool": avgpool, **extra.pop("probe_options", {})}
    return make_config("linear", {**TRAIN, "lr": lr, "layers": layers, "probe_options": options, **extra})


@pytest.fixture(scope="module")
def last4(_video_tree, tmp_path_factory):
    cache = tmp_path_factory.mktemp("nested") / "last4"
    extract(_video_tree, cache, layers="last4", **{**TINY, "clips": 2})
    return cache


def test_the_grid_groups_into_one_stack_and_layer_norm_keeps_its_own(last4):
    layout = open_shards(last4).layout
    grid = [_config(layers, avgpool, lr) for lr in (0.01, 0.1) for layers, avgpool in KINDS]
    assert group_by_shape(grid) == [list(range(8))]
    reading, plan = stack_reading(grid, layout)
    assert isinstance(plan, NestedPlan) and (plan.blocks, plan.patches, plan.merged) == (4, True, True)
    assert reading.layers == "concat:last4" and reading.probe_options["avgpool"]  # every token of the 4 layers
    reading, plan = stack_reading([grid[0], grid[2]], layout)  # no avgpool: the class tokens of the 4 layers
    assert (reading.layers, plan.merged, plan.kinds) == ("concat:last4", False, ((1, False), (4, False)))
    # members that read the same input stack as they are (train-probe --seeds, an lr grid of one kind)
    assert stack_reading([grid[0], grid[4]], layout)[1] is None
    normed = make_config("linear", {**TRAIN, "layers": "last"})  # LayerNorm (the default): the widths do not nest
    assert not nests(normed) and group_by_shape([grid[0], normed]) == [[0], [1]]
    assert [last_blocks(s) for s in ("last", "concat:last4", "concat:9,10", "10", "mix")] == [1, 4, None, None, None]


def test_a_member_of_the_one_stack_grid_trains_as_its_config_alone(last4, tmp_path):
    """All four kinds of DINOv2's grid (n_last_blocks 1 / 4 x avgpool) in one stack of two lrs each: each member's
    weights (its columns of the wide head), metrics and parameter count equal the run of its config alone."""
    shards = open_shards(last4)
    grid = [_config(layers, avgpool, lr) for lr in (0.01, 0.1) for layers, avgpool in KINDS]
    results = train_stacked(shards, grid, keep_weights=True)
    assert {r.metrics["stacked_members"] for r in results} == {8}
    dim, frames, per_frame = shards.layout.dim, shards.manifest.frames, shards.layout.tokens_per_frame
    # Tolerance from the arithmetic: the stacked head sums <= 5D products (zeros in the masked columns) and pools
    # <= T x P tokens in another order than the narrow probe; each float32 sum of n terms in another order differs
    # by at most gamma_n = n u (u = 2^-24) times the sum of the terms' magnitudes (Higham, Thm 3.1). SGD adds one
    # such relative error per step: after S steps at most S gamma_n of the weights' magnitude.
    gamma = (5 * dim + frames * per_frame) * 2.0**-24
    for member, (layers, avgpool) in enumerate(KINDS * 2):
        config = grid[member]
        out = tmp_path / f"lone-{member}"
        options = {"layer_norm": False, "avgpool": avgpool}
        lone = train_probe(shards, "linear", out, **{**TRAIN, "lr": config.lr, "layers": layers}, probe_options=options)
        stacked = results[member]
        train_clips = json.loads((out / "config.json").read_text())["data"]["splits"]["train"]
        weights = torch.load(out / "best.pt", weights_only=True)
        assert sorted(weights) == sorted(stacked.weights), (layers, avgpool)
        steps = TRAIN["epochs"] * math.ceil(train_clips / TRAIN["batch_size"])
        for key, value in weights.items():
            assert stacked.weights[key].shape == value.shape
            scale = value.abs().max().item()
            torch.testing.assert_close(stacked.weights[key], value, rtol=0, atol=steps * gamma * scale)
        assert stacked.metrics["parameters"] == lone.metrics["parameters"]
        assert stacked.metrics["best_epoch"] == lone.metrics["best_epoch"]
        assert stacked.metrics["top1"] == lone.metrics["top1"]
        assert stacked.metrics["loss"] == pytest.approx(lone.metrics["loss"], rel=steps * gamma)


def test_masked_columns_get_no_gradient_and_stay_zero_under_weight_decay():
    torch.manual_seed(0)
    mask = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # the last of 2 layers of width 2, and the patch mean
    head = NestedLinear(layer_dim=2, layers=2, patches=True, mask=mask, num_classes=3, tokens_per_frame=3,
                        cls_index=0)  # fmt: skip
    with torch.no_grad():
        head.head.weight[:, 2:] = torch.randn(3, 4)
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.1, weight_decay=0.5)
    tokens = torch.randn(5, 2, 3, 4)
    for _ in range(3):
        optimizer.zero_grad()
        head(tokens).logsumexp(dim=-1).sum().backward()
        assert torch.equal(head.head.weight.grad[:, :2], torch.zeros(3, 2))
        optimizer.step()
    assert torch.equal(head.head.weight[:, :2], torch.zeros(3, 2))
    # its logits are the narrow head's on its columns: the last layer's frame-mean CLS, then the mean patch token
    features = torch.cat([tokens[:, :, 0, 2:].mean(dim=1), tokens[:, :, 1:, 2:].mean(dim=(1, 2))], dim=-1)
    expected = features @ head.head.weight[:, 2:].T + head.head.bias
    # sums of <= 4 terms (means over 2 frames or 4 patch tokens, a dot product over 4 columns) in another order
    bound = 8 * 2.0**-24 * (features.abs() @ head.head.weight[:, 2:].abs().T + head.head.bias.abs())
    assert ((head(tokens) - expected).abs() <= bound).all()


def test_a_synthetic_cache_with_layers_has_a_layer_axis_and_the_signal_in_every_layer(tmp_path):
    """bench/protocol_grid.py's 4-layer cache: each layer is the class signal under its own noise."""
    import numpy as np

    from step_cache.synthetic.tokens import write_token_cache

    write_token_cache(tmp_path / "plain", task="static", num_classes=2, videos_per_class=2, dim=8)
    write_token_cache(tmp_path / "four", task="static", num_classes=2, videos_per_class=2, dim=8, layers=(8, 9, 10, 11))
    plain, four = open_shards(tmp_path / "plain"), open_shards(tmp_path / "four")
    assert four.layout.layers == (8, 9, 10, 11) and plain.layout.layers is None
    rows = np.arange(len(four))
    stacked, single = four.read_tokens(rows).astype(np.float32), plain.read_tokens(rows).astype(np.float32)
    assert stacked.shape == (len(rows), 4, *single.shape[1:])
    assert not np.array_equal(stacked[:, 0], stacked[:, 3])  # own noise per layer
    for row, label in enumerate(four.labels[rows]):  # the signal channel is 1 + noise in every layer
        means = stacked[row, :, :, :, label % 8].mean(axis=(1, 2))
        assert np.all(np.abs(means - 1.0) < 0.5), means


@pytest.mark.parametrize("merged", [True, False], ids=["cls-of-4-and-last", "all-of-4"])
def test_each_members_logits_are_its_narrow_probes_on_the_cache(last4, merged):
    """At initialisation (the member's columns hold its narrow probe's weights, seeded as train_probe seeds it) the
    stacked wide heads give each narrow probe's logits on the cache's tokens, within float32 summation order: on
    the stack's own read (the class tokens of the 4 layers and every token of the last, ``nested_data``) and on
    every token of the 4 layers."""
    from step_cache.probes.layer_inputs import build_layered_probe
    from step_cache.training.config import full_options
    from step_cache.training.layer_choice import concat_channels
    from step_cache.training.stacking.nested import nested_data, nested_members
    from step_cache.training.stacking.shared_data import DataCache

    shards = open_shards(last4)
    grid = [_config(layers, avgpool, seed=seed) for seed in (0, 1) for layers, avgpool in KINDS]
    configs = [dataclasses.replace(c, probe_options=full_options(c)) for c in grid]
    reading, plan = stack_reading(grid, shards.layout)
    rows = np.arange(len(shards))
    dim, per_frame = shards.layout.dim, shards.layout.tokens_per_frame
    cache = DataCache(shards)
    try:
        data = nested_data(cache, plan) if merged else cache.get(reading)
        stack, parameters, _ = nested_members(plan, configs, data)
        read = torch.cat([t for t, _, _ in data.source.batches([rows[:7], rows[7:]])])
        if merged:  # in memory: 4 class tokens and the last layer's P tokens per frame, not 4 x P tokens
            held = data.source.classes.nbytes + data.source.last.nbytes
            every = cache.get(reading).source.nbytes
            assert held * 4 * per_frame == every * (4 + per_frame)
    finally:
        cache.close()
    tokens = concat_channels(torch.from_numpy(shards.read_tokens(rows)))  # (N, T, P, 4D) float16, CLS first

    assert read.shape[2:] == ((3 + per_frame, dim) if merged else (per_frame, 4 * dim))
    stack.train(False)
    with torch.no_grad():
        logits = stack(read)  # (K, N, C)
    frames = shards.manifest.frames
    gamma = (5 * dim + frames * per_frame) * 2.0**-24
    for member, config in enumerate(configs):
        n, avgpool = last_blocks(config.layers), config.probe_options["avgpool"]
        torch.manual_seed(config.seed)
        narrow = build_layered_probe("linear", layer_dim=dim, layers=n, mix=False, num_classes=len(shards.classes),
                                     frames=frames, tokens_per_frame=per_frame, cls_index=0,
                                     **config.probe_options).eval()  # fmt: skip
        assert parameters[member] == sum(p.numel() for p in narrow.parameters())
        with torch.no_grad():
            expected = narrow(tokens[..., -n * dim :])
            # the bound: gamma times the sum of the terms' magnitudes: the features' (frame means of |CLS|, the mean
            # |patch token|, each >= |its mean|) times |w|, plus |b|
            x = tokens.float().abs()
            features = x[:, :, 0, -n * dim :].mean(dim=1)
            if avgpool:
                features = torch.cat([features, x[:, :, 1:, -dim:].mean(dim=(1, 2))], dim=-1)
            bound = gamma * (features @ narrow.head.weight.abs().T + narrow.head.bias.abs())
        assert ((logits[member] - expected).abs() <= bound).all(), (config.layers, avgpool, config.seed)


def test_the_nested_read_streams_as_it_reads_in_memory(last4):
    """The merged read (the class tokens of 4 layers and every token of the last) from HDF5 batch by batch gives
    the stack of the whole grid bit-identical weights to the read held in memory."""
    shards = open_shards(last4)
    runs = {}
    for data in ("memory", "streaming"):
        grid = [_config(layers, avgpool, data=data, workers=0) for layers, avgpool in KINDS]
        runs[data] = train_stacked(shards, grid, keep_weights=True)
    for memory, streaming in zip(runs["memory"], runs["streaming"], strict=True):
        assert memory.weights.keys() == streaming.weights.keys()
        assert all(torch.equal(memory.weights[key], streaming.weights[key]) for key in memory.weights)
        for key in ("top1", "loss"):
            assert memory.metrics[key] == streaming.metrics[key], key


@pytest.mark.parametrize("tokens", ["cls", "patches"])
def test_a_grid_that_reads_no_cls_and_patches_refuses_avgpool_as_its_members_alone_do(last4, tmp_path, tokens):
    """tokens='cls' (or 'patches') gives an avgpool member no patch tokens (or no CLS token) to pool: alone it is
    refused, and in a nested stack too, rather than trained on every token of the last layer."""
    from step_cache.probes.layers import ProbeConfigError

    shards = open_shards(last4)
    grid = [_config("last", False, tokens=tokens), _config("concat:last4", True, tokens=tokens)]
    with pytest.raises(ProbeConfigError, match="avgpool=True") as alone:
        train_probe(shards, "linear", tmp_path / "alone", **{**TRAIN, "layers": "concat:last4", "tokens": tokens},
                    probe_options={"layer_norm": False, "avgpool": True})  # fmt: skip
    assert "tokens='all'" in str(alone.value)  # the Python wording, from Python
    with pytest.raises(ProbeConfigError, match="avgpool=True") as stacked:
        train_stacked(shards, grid)
    assert "tokens='all'" in str(stacked.value)


def test_token_drop_in_a_grid_is_refused_for_a_member_that_alone_reads_no_patch_tokens(last4, tmp_path):
    """token_drop drops patch tokens: a member without avgpool reads the CLS tokens only, and alone is refused (so
    a sweep's best-run/ could not retrain it); in a nested stack whose avgpool members read every token, too."""
    from step_cache.training.splits import DataError

    shards = open_shards(last4)
    with pytest.raises(DataError, match="drops patch tokens") as alone:
        train_probe(shards, "linear", tmp_path / "alone", **{**TRAIN, "layers": "last", "token_drop": 0.5},
                    probe_options={"layer_norm": False, "avgpool": False})  # fmt: skip
    grid = [_config("last", False, token_drop=0.5), _config("concat:last4", True, token_drop=0.5)]
    with pytest.raises(DataError, match="drops patch tokens") as stacked:
        train_stacked(shards, grid)
    assert str(stacked.value) == str(alone.value)
    # avgpool members alone read the patch tokens they drop among: that grid trains
    results = train_stacked(
        shards, [_config("last", True, token_drop=0.5), _config("concat:last4", True, token_drop=0.5)]
    )
    assert [r.metrics["stacked_members"] for r in results] == [2, 2]
