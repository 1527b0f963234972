"""The four probes and their registry: shapes, frame-order (in)sensitivity, parameter budgets, learning on
synthetic tokens, and equivalence under torch.func.vmap over stacked members (how sweeps train them)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

from step_cache.probes import (
    PROBES,
    SHAPE_ARGUMENTS,
    ProbeConfigError,
    ProbeInputError,
    StackableDropout,
    StepProbe,
    build_probe,
    count_parameters,
    probe_options,
)
from step_cache.probes.layers import Block, cls_readout, default_num_heads

D, T, P, C = 32, 6, 5, 3
EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
# Two summation orders of the same float32 arithmetic (vmapped vs plain kernels, permuted frames, folded vs explicit
# attention; and per CPU, scalar / AVX2 / AVX-512 kernels) differ by at most about eps × (number of terms summed) ×
# (size of the values summed). Here: D = 32-wide dot products and LayerNorms, attention over T·P + 1 = 31 tokens, on
# activations of size up to ~3 (LayerNorm'd, or 3·x + 1): 32 × 3 × eps = 1.1e-5. Measured: at most 4.8e-7.
FORWARD_ATOL = EPS32 * max(D, T * P + 1) * 3
INVARIANT = ("linear", "attentive", "self-attentive")
# CPU SDPA has no vmap batching rule; the fallback is correct, only slower, and warns.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def make(name: str, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    shape = {"dim": D, "num_classes": C, "frames": T, "tokens_per_frame": P, "cls_index": 0}
    return build_probe(name, **shape, **options).eval()


def tokens(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, T, P, D, generator=torch.Generator().manual_seed(seed))


def stacked_forward(probes: list[torch.nn.Module], x: torch.Tensor) -> torch.Tensor:
    """All probes at once, the way the sweeps run them: stacked state, one vmapped functional call."""
    params, buffers = stack_module_state(probes)
    base = copy.deepcopy(probes[0]).to("meta")

    def call(p, b, inputs):
        return functional_call(base, (p, b), (inputs,))

    return vmap(call, in_dims=(0, 0, None), randomness="different")(params, buffers, x)


# --- shapes, dtypes, registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PROBES))
def test_logits_shape_and_float16_tokens(name):
    probe, x = make(name), tokens()
    logits = probe(x)
    assert logits.shape == (4, C) and logits.dtype == torch.float32
    half = probe(x.half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, probe(x.half().float()), rtol=0, atol=0)


def test_registry_lists_options_with_defaults():
    assert set(PROBES) == {"linear", "attentive", "self-attentive", "step"}
    assert probe_options("linear") == {"dropout": 0.0, "avgpool": False, "layer_norm": True}
    expected = {"num_heads": None, "dropout": 0.0, "mlp_ratio": 4.0, "output_projection": False}
    assert probe_options("attentive") == expected
    assert probe_options("step") == {
        "num_heads": None,
        "dropout": 0.0,
        "mlp_ratio": 4.0,
        "frame_pos": True,
        "global_cls": True,
        "mlp": False,
        "depth": 1,
    }


def test_unknown_probe_and_option_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown probe 'mean'.*linear, attentive, self-attentive, step"):
        make("mean")
    with pytest.raises(ProbeConfigError, match="no option frame_pos; its options are: num_heads, dropout"):
        make("attentive", frame_pos=False)
    with pytest.raises(ValueError, match="unknown probe"):
        probe_options("nope")


def test_invalid_option_values_are_rejected():
    with pytest.raises(ProbeConfigError, match="num_heads=5 must be a positive divisor of the token width D=32"):
        make("step", num_heads=5)
    with pytest.raises(ProbeConfigError, match=r"dropout=1.0 must be in \[0, 1\)"):
        make("linear", dropout=1.0)
    with pytest.raises(ProbeConfigError, match="depth=0"):
        make("step", depth=0)
    with pytest.raises(ProbeConfigError, match="cls_index=5"):
        build_probe("linear", dim=D, num_classes=C, frames=T, tokens_per_frame=P, cls_index=5)


def test_wrong_token_shapes_are_rejected_clearly():
    with pytest.raises(ProbeInputError, match=r"token width D=32, got tokens of shape \(4, 6, 5, 16\)"):
        make("attentive")(torch.randn(4, T, P, 16))
    with pytest.raises(ProbeInputError, match=r"\(B, T, P, D\)"):
        make("linear")(torch.randn(4, P, D))
    with pytest.raises(ProbeInputError, match="built for T=6 frames"):
        make("step")(torch.randn(4, T + 1, P, D))
    assert make("step", frame_pos=False)(torch.randn(2, T + 1, P, D)).shape == (2, C)


def test_default_heads_are_64_channels_each_and_divide_the_width():
    assert [default_num_heads(d) for d in (32, 96, 192, 384, 768, 1024, 200)] == [1, 1, 3, 6, 12, 16, 2]


def test_linear_reads_cls_tokens_or_averages_all_tokens_without_cls():
    x = tokens()
    probe = make("linear")
    # The probe's own operations, in the same order: equal bit for bit.
    torch.testing.assert_close(probe(x), probe.head(probe.norm(x[:, :, 0].mean(1))), rtol=0, atol=0)
    torch.manual_seed(0)
    no_cls = build_probe("linear", dim=D, num_classes=C, frames=T, tokens_per_frame=P, cls_index=None).eval()
    torch.testing.assert_close(no_cls(x), no_cls.head(no_cls.norm(x.mean((1, 2)))), rtol=0, atol=0)


def test_step_without_frame_pos_and_with_mlp_is_the_self_attentive_probe():
    reference, step = make("self-attentive", seed=3), make("step", seed=4, frame_pos=False, mlp=True)
    step.load_state_dict(reference.state_dict())
    # Both run cls_readout over the same blocks, then the same norm and head: the same operations, bit for bit.
    torch.testing.assert_close(step(tokens()), reference(tokens()), rtol=0, atol=0)


def test_a_self_attentive_checkpoint_from_before_the_preset_loads_and_computes_the_same():
    # Written by the SelfAttentiveProbe class of commit 17db002, before the probe became a preset of StepProbe.
    saved = torch.load(Path(__file__).parent / "data" / "self_attentive_17db002.pt", weights_only=True)
    probe = build_probe("self-attentive", **saved["shape"], **saved["options"]).eval()
    probe.load_state_dict(saved["state_dict"])  # strict: the same parameter names and shapes
    assert isinstance(probe, StepProbe) and probe.frame_pos is None
    assert probe_options("self-attentive") == {"num_heads": None, "dropout": 0.0, "mlp_ratio": 4.0, "depth": 1}
    # The same operations in the same order as the old class: equal but for the CPU's kernels (FORWARD_ATOL).
    torch.testing.assert_close(probe(saved["tokens"]), saved["logits"], rtol=0, atol=FORWARD_ATOL)


@pytest.mark.parametrize("name", list(PROBES))
def test_every_probe_takes_the_same_shape_keywords(name):
    shape = {"dim": D, "num_classes": C, "frames": T, "tokens_per_frame": P, "cls_index": 0}
    assert tuple(shape) == SHAPE_ARGUMENTS
    with pytest.raises(TypeError, match=r"missing \['frames'\], unexpected \['frame'\]"):
        PROBES[name](**{**{k: v for k, v in shape.items() if k != "frames"}, "frame": T})
    with pytest.raises(ProbeConfigError, match=r"cls_index=5 must be None or in \[0, tokens_per_frame=5\)"):
        PROBES[name](**{**shape, "cls_index": 5})


def random_layer_norms(module: torch.nn.Module) -> None:
    """Non-trivial LayerNorm affines, so that folding them into the attention is actually tested."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.LayerNorm):
            torch.nn.init.normal_(sub.weight)
            torch.nn.init.normal_(sub.bias)


def test_pooling_query_outside_the_context_matches_explicit_cross_attention():
    torch.manual_seed(0)
    block = Block(D, 2, mlp=False, mlp_ratio=4.0, dropout=0.0).eval()
    random_layer_norms(block)
    x, queries = 3 * tokens() + 1, torch.randn(4, 3, D)
    context, normed_queries = block.norm1(x.flatten(1, 2)), block.norm1(queries)
    weights, biases = block.attn.qkv.weight.split(D), block.attn.qkv.bias.split(D)
    q, k, v = (
        F.linear(h, w, b).unflatten(-1, (2, D // 2)).transpose(1, 2)
        for h, w, b in zip((normed_queries, context, context), weights, biases, strict=True)
    )
    explicit = queries + block.attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(block.pool(queries, x, include_queries=False), explicit, rtol=0, atol=FORWARD_ATOL)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("with_frame_pos", [False, True])
def test_cls_readout_matches_running_full_blocks_on_the_whole_sequence(depth, with_frame_pos):
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(Block(D, 2, mlp=True, mlp_ratio=4.0, dropout=0.0) for _ in range(depth)).eval()
    random_layer_norms(blocks)
    x, cls = 3 * tokens() + 1, torch.randn(4, 1, D)
    frame_pos = torch.randn(T, D) if with_frame_pos else None
    sequence = torch.cat([cls, (x if frame_pos is None else x + frame_pos[:, None]).flatten(1, 2)], dim=1)
    for block in blocks:
        sequence = block(sequence)
    torch.testing.assert_close(cls_readout(blocks, cls, x, frame_pos), sequence[:, 0], rtol=0, atol=FORWARD_ATOL)


# --- frame order ----------------------------------------------------------------------------------------------

PERMUTATION = torch.tensor([3, 0, 5, 1, 4, 2])


def with_random_weights(probe: torch.nn.Module) -> torch.nn.Module:
    """At init (std 0.02) attention is nearly uniform and the frame embedding tiny, which would make any probe
    look almost order-blind; weights of std 0.3 give sharp attention and strong frame embeddings, like training."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in probe.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return probe


@pytest.mark.parametrize("name", INVARIANT)
def test_order_blind_probes_ignore_frame_permutations(name):
    probe, x = with_random_weights(make(name)), tokens()
    torch.testing.assert_close(probe(x[:, PERMUTATION]), probe(x), rtol=0, atol=FORWARD_ATOL)


@pytest.mark.parametrize("options", [{}, {"global_cls": False}, {"mlp": True, "depth": 2}])
def test_step_sees_frame_order_unless_frame_pos_is_off(options):
    x = tokens()
    step = with_random_weights(make("step", **options))
    assert (step(x[:, PERMUTATION]) - step(x)).abs().max() > 1e-3  # ~100x FORWARD_ATOL, the tolerance of "equal"
    blind = with_random_weights(make("step", frame_pos=False, **options))
    torch.testing.assert_close(blind(x[:, PERMUTATION]), blind(x), rtol=0, atol=FORWARD_ATOL)


# --- parameter budgets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [64, 384])
def test_step_has_at_most_40_percent_of_self_attentive_parameters(dim):
    shape = {"dim": dim, "num_classes": 10, "frames": 16, "tokens_per_frame": 257, "cls_index": 0}
    step = count_parameters(build_probe("step", **shape), exclude_head=True)
    full = count_parameters(build_probe("self-attentive", **shape), exclude_head=True)
    # Attention 4D²+4D, two LayerNorms 4D, CLS D, frame rows 16·D; the full block adds MLP 8D²+5D and a LayerNorm.
    assert step == 4 * dim**2 + (16 + 9) * dim
    assert full == 12 * dim**2 + 16 * dim
    assert step <= 0.4 * full
    assert count_parameters(build_probe("linear", **shape), exclude_head=True) == 2 * dim
    assert count_parameters(build_probe("step", **shape)) == step + dim * 10 + 10


# --- learning on synthetic tokens -----------------------------------------------------------------------------


def order_task(pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: feature 0 rises over the frames; class 1: the same clips played backwards. Every other value is
    noise, so the two classes hold the same frames and only their order tells them apart."""
    rising = torch.randn(pairs, T, P, D, generator=torch.Generator().manual_seed(seed))
    rising[..., 0] += 3 * torch.linspace(-1, 1, T)[None, :, None]
    return torch.cat([rising, rising.flip(1)]), torch.cat([torch.zeros(pairs), torch.ones(pairs)]).long()


def level_task(clips: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order-free: the class is the mean level (+1 or -1) of feature 0."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (clips,), generator=generator)
    x = torch.randn(clips, T, P, D, generator=generator)
    x[..., 0] += (2 * labels - 1)[:, None, None].float()
    return x, labels


def train_and_score(name: str, task, steps: int = 200) -> tuple[float, float]:
    (x_train, y_train), (x_val, y_val) = task(128, seed=10), task(128, seed=11)
    torch.manual_seed(0)
    probe = build_probe(name, dim=D, num_classes=2, frames=T, tokens_per_frame=P, cls_index=0)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=3e-3)
    probe.train()
    for _ in range(steps):
        loss = F.cross_entropy(probe(x_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe.eval()
    with torch.no_grad():
        return tuple((probe(x).argmax(1) == y).float().mean().item() for x, y in ((x_train, y_train), (x_val, y_val)))


def test_only_step_learns_a_task_decided_by_frame_order():
    train_acc, val_acc = train_and_score("step", order_task)
    assert train_acc >= 0.95 and val_acc >= 0.95
    for name in INVARIANT:
        # A clip and its reverse get identical logits, so these probes cannot beat 50 % on mirrored pairs.
        assert max(train_and_score(name, order_task, steps=100)) <= 0.65, name


@pytest.mark.parametrize("name", list(PROBES))
def test_every_probe_learns_an_order_free_task(name):
    train_acc, val_acc = train_and_score(name, level_task)
    assert train_acc >= 0.9 and val_acc >= 0.9


# --- stacked members under vmap (sweeps) ----------------------------------------------------------------------

VARIANTS = [
    ("linear", {}),
    ("linear", {"avgpool": True, "layer_norm": False}),
    ("attentive", {}),
    ("attentive", {"output_projection": True}),
    ("self-attentive", {}),
    ("self-attentive", {"depth": 2}),
    ("step", {}),
    ("step", {"global_cls": False}),
    ("step", {"mlp": True, "depth": 2, "num_heads": 2}),
]


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_vmapped_members_match_members_run_one_by_one(name, options):
    probes = [make(name, seed=seed, dropout=0.1, **options) for seed in range(3)]
    x = tokens()
    stacked = stacked_forward(probes, x)
    assert stacked.shape == (3, 4, C)
    for member, probe in enumerate(probes):
        torch.testing.assert_close(stacked[member], probe(x), rtol=0, atol=FORWARD_ATOL)


@pytest.mark.parametrize("mode", ["vmap(grad)", "backward through vmap"])
@pytest.mark.parametrize("name", ["attentive", "self-attentive", "step"])
def test_vmapped_gradients_match_per_member_gradients(name, mode):
    probes = [make(name, seed=seed) for seed in range(2)]
    x, y = tokens(), torch.tensor([0, 1, 2, 0])
    params, buffers = stack_module_state(probes)
    base = copy.deepcopy(probes[0]).to("meta")

    def loss(p, b):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    if mode == "vmap(grad)":
        grads = vmap(grad(loss), randomness="different")(params, buffers)
    else:  # one vmapped forward, one backward over the summed member losses
        vmap(loss, randomness="different")(params, buffers).sum().backward()
        grads = {key: value.grad for key, value in params.items()}
    for member, probe in enumerate(probes):
        F.cross_entropy(probe(x), y).backward()
        # A gradient element sums over 4 clips x 31 tokens, terms the size of the largest gradient at most (some
        # cancel to ~0, e.g. the key bias's): eps x 124 x that size (~1e-5; measured: at most 1.8e-7).
        scale = max(parameter.grad.abs().max().item() for parameter in probe.parameters())
        for key, parameter in probe.named_parameters():
            atol = EPS32 * len(y) * (T * P + 1) * scale
            torch.testing.assert_close(grads[key][member], parameter.grad, rtol=0, atol=atol, msg=key)


def test_each_stacked_member_drops_with_its_own_rate():
    probes = [make("step", seed=0, dropout=rate).train() for rate in (0.0, 0.5, 0.5)]
    x = tokens()
    torch.manual_seed(5)
    stacked = stacked_forward(probes, x)
    with torch.no_grad():
        eval_logits = probes[0].eval()(x)
    torch.testing.assert_close(stacked[0], eval_logits, rtol=0, atol=FORWARD_ATOL)  # rate 0: no dropout at all
    assert (stacked[1] - eval_logits).abs().max() > 1e-3  # same weights, rate 0.5: dropped
    assert (stacked[1] - stacked[2]).abs().max() > 1e-3  # randomness='different': independent masks


def test_stackable_dropout_rate_and_scaling():
    dropout = StackableDropout(0.25).train()
    torch.manual_seed(0)
    out = dropout(torch.ones(100_000))
    assert torch.allclose(out.unique(), torch.tensor([0.0, 1 / 0.75]))  # 1 / 0.75 rounded once or twice: 1 ulp
    # 100 000 Bernoulli(0.25) draws: standard deviation sqrt(0.25 · 0.75 / 1e5) = 0.0014, so 0.01 is 7 sigma.
    assert (out == 0).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert torch.equal(dropout.eval()(torch.ones(10)), torch.ones(10))
    assert "rate" not in dropout.state_dict()  # a setting, not a weight: checkpoints hold weights only
