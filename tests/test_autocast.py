"""Probes under bf16 autocast (what training uses on CUDA by default; CPU autocast runs the same code paths):
a whole training step works for every probe, alone and stacked as sweeps run it, and stays close to float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from step_cache.probes import build_probe
from step_cache.probes.layers import Block
from step_cache.probes.shared_matmul import token_scores, weighted_tokens
from step_cache.training.optimization import build_optimizer
from step_cache.training.stacking.adamw import StackedAdamW
from step_cache.training.stacking.members import StackedProbes
from step_cache.training.stacking.stacked_run import member_losses

D, T, P, C = 64, 4, 5, 3
# bf16 keeps 8 significant bits: each rounding is off by up to 2^-9 ≈ 0.2 % (relative), and float32 accumulation
# adds nothing comparable. A gradient computed through a few bf16 roundings is therefore off by about 1 % (relative
# norm), so its cosine to the float32 gradient is about 1 - ½ (1e-2)² = 0.99995 (measured: >= 0.99991 for every probe
# on scalar, AVX2 and AVX-512 kernels); the thresholds below (0.999, 0.99) allow 4.5 % and 14 %, and do not depend on
# the CPU. What they catch is a product that cancels in bf16, or a gradient that goes wrong: cosines far below.
VARIANTS = [
    ("linear", {}),
    ("attentive", {}),
    ("self-attentive", {}),
    ("self-attentive", {"depth": 2}),
    ("step", {}),
    ("step", {"global_cls": False}),
    ("step", {"mlp": True, "depth": 2, "num_heads": 2}),
]
# CPU SDPA has no vmap batching rule (full self-attention in stacks); the fallback is correct and warns.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def make(name: str, options: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_probe(name, dim=D, num_classes=C, frames=T, tokens_per_frame=P, cls_index=0, **options)


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(6, T, P, D, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def test_shared_products_backpropagate_under_autocast():
    """The autograd Functions save float32 inputs but run their forward product in bf16; backward (outside
    autocast) must still work and return float32 gradients close to the float32 ones."""
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 40, 16, generator=generator)
    for product, small_shape in ((token_scores, (2, 3, 16)), (weighted_tokens, (2, 3, 40))):
        small = torch.randn(small_shape, generator=generator, requires_grad=True)
        with bf16_autocast():
            out = product(small, tokens)
        assert out.dtype == torch.bfloat16
        (out.float() ** 2).sum().backward()
        assert small.grad.dtype == torch.float32
        approx = small.grad
        small.grad = None
        (product(small, tokens) ** 2).sum().backward()
        assert cosine(approx, small.grad) > 0.999


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_one_training_step_of_a_probe_under_bf16_autocast(name, options):
    x, y = batch()
    reference = make(name, options)
    F.cross_entropy(reference(x), y).backward()
    probe = make(name, options)
    optimizer = build_optimizer(probe, 1e-3, 0.05)
    before = {key: value.detach().clone() for key, value in probe.named_parameters()}
    with bf16_autocast():
        logits = probe(x)
    F.cross_entropy(logits.float(), y).backward()
    for key, parameter in probe.named_parameters():
        assert parameter.grad.dtype == torch.float32 and torch.isfinite(parameter.grad).all(), key
    grads = torch.cat([p.grad.flatten() for p in probe.parameters()])
    assert cosine(grads, torch.cat([p.grad.flatten() for p in reference.parameters()])) > 0.99
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in probe.parameters())
    assert any(not torch.equal(before[key], p) for key, p in probe.named_parameters())


@pytest.mark.parametrize(("name", "options"), VARIANTS)
def test_one_training_step_of_stacked_probes_under_bf16_autocast(name, options):
    x, y = batch()
    stack = StackedProbes([make(name, options, seed) for seed in range(3)])
    optimizer = StackedAdamW(
        stack.params, lr=[1e-3] * 3, weight_decay=[0.05] * 3, warmup_steps=[0] * 3, clip_grad=[1.0] * 3, total_steps=4
    )
    before = stack.snapshot()
    with bf16_autocast():
        logits = stack(x)
    assert logits.shape == (3, len(y), C)
    member_losses(logits.float(), y, torch.zeros(3)).sum().backward()
    for key, parameter in stack.params.items():
        assert parameter.grad.dtype == torch.float32 and torch.isfinite(parameter.grad).all(), key
    optimizer.clip_gradients(stack.params)
    optimizer.step(stack.params)
    changed = [not torch.equal(before[key][k], stack.params[key][k]) for key in before for k in range(3)]
    assert any(changed)
    # Each member's gradient is its own loss's: member 1 alone (float32) points the same way.
    lone = make(name, options, seed=1)
    F.cross_entropy(lone(x), y).backward()
    assert cosine(stack.params["head.weight"].grad[1], lone.head.weight.grad) > 0.99


@pytest.mark.parametrize("with_frame_pos", [False, True])
@pytest.mark.parametrize("include_queries", [False, True])
def test_attention_pool_under_bf16_autocast_stays_within_1_percent_for_off_centre_tokens(
    with_frame_pos, include_queries
):
    """Tokens whose per-token mean is far from 0 (offset 5): the folded scores and pooled values subtract large,
    nearly equal terms, which must not happen in bf16. Error relative to the attention's contribution."""
    dim, frames, per_frame = 192, 4, 17
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    block = Block(dim, 3, mlp=False, mlp_ratio=4, dropout=0.0).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        block.norm1.weight.fill_(1.0)
    tokens = torch.randn(4, frames, per_frame, dim, generator=generator) + 5.0
    queries = torch.randn(4, 1, dim, generator=generator)
    frame_pos = torch.randn(frames, dim, generator=generator) * 0.5 if with_frame_pos else None
    with torch.no_grad():
        exact = block.pool(queries, tokens, frame_pos, include_queries=include_queries)
        with bf16_autocast():
            mixed = block.pool(queries, tokens, frame_pos, include_queries=include_queries).float()
    error = ((mixed - exact).norm() / (exact - queries).norm()).item()
    # A chain of ~4 bf16 roundings (scores, weights, weighted sum, projection) of 2^-9 each, partly averaging out in
    # the norm: < 1 % (measured 0.37 % on scalar, AVX2 and AVX-512 kernels). Cancellation of the large, nearly equal
    # terms in bf16 would give errors of the order of the offset, far above.
    assert error < 0.01
