"""The baselines against their anchors (docs/step.md, "Fidelity to the anchors"): ``attentive`` computes V-JEPA's
``AttentiveClassifier`` (depth 1) and V-JEPA 2's (depth N) and is initialised like them; ``linear`` computes
DINOv2's linear head over
``create_linear_input`` (one block, with and without ``use_avgpool``). The references below are written from
the anchors' forward passes, in float64, as plain tensor arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from step_cache.probes import (
    AttentiveProbe,
    ProbeConfigError,
    attentive_from_vjepa,
    build_probe,
    count_parameters,
    probe_options,
    recorded_options,
)

B, T, P, D, H, C = 3, 4, 5, 48, 4, 7
HIDDEN = 4 * D
BLOCK = "pooler.cross_attention_block."
# float64 references and ours differ only in summation order: eps64 (2.2e-16) x a few hundred terms x values of
# size ~10 is ~1e-12; the bound is 1e-6.
TOLERANCE = 1e-6


def vjepa_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """An AttentiveClassifier state dict with V-JEPA's key names and weights large enough for sharp attention and
    logits far from zero (std 0.3, like trained weights; non-trivial LayerNorm affines)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "pooler.query_tokens": (1, 1, D),
        BLOCK + "norm1.weight": (D,),
        BLOCK + "norm1.bias": (D,),
        BLOCK + "xattn.q.weight": (D, D),
        BLOCK + "xattn.q.bias": (D,),
        BLOCK + "xattn.kv.weight": (2 * D, D),
        BLOCK + "xattn.kv.bias": (2 * D,),
        BLOCK + "xattn.proj.weight": (D, D),
        BLOCK + "xattn.proj.bias": (D,),
        BLOCK + "norm2.weight": (D,),
        BLOCK + "norm2.bias": (D,),
        BLOCK + "mlp.fc1.weight": (HIDDEN, D),
        BLOCK + "mlp.fc1.bias": (HIDDEN,),
        BLOCK + "mlp.fc2.weight": (D, HIDDEN),
        BLOCK + "mlp.fc2.bias": (D,),
        "linear.weight": (C, D),
        "linear.bias": (C,),
    }
    state = {key: 0.3 * torch.randn(shape, generator=generator, dtype=torch.float64) for key, shape in shapes.items()}
    for norm in ("norm1", "norm2"):
        state[BLOCK + f"{norm}.weight"] += 1.0
    return state


def vjepa_logits(state: dict[str, torch.Tensor], tokens: torch.Tensor, apply_proj: bool) -> torch.Tensor:
    """V-JEPA's AttentiveClassifier forward on tokens (B, T, P, D) flattened time-major: the query is not
    normalised, the tokens go through norm1, multi-head cross-attention (head_dim^-0.5 scale), the projection
    only where the revision applies it, a residual pre-norm GELU MLP, no final norm, then ``linear``."""
    return cross_attention_logits(state, tokens.flatten(1, 2), apply_proj)


def cross_attention_logits(state: dict[str, torch.Tensor], x: torch.Tensor, apply_proj: bool) -> torch.Tensor:
    """The pooler's cross-attention block and ``linear`` on a token sequence x (B, N, D) (``vjepa_logits``)."""
    w = {key.removeprefix(BLOCK): value for key, value in state.items()}
    batch, length, _ = x.shape
    head_dim = D // H
    query = w["pooler.query_tokens"].expand(batch, -1, -1)
    context = F.layer_norm(x, (D,), w["norm1.weight"], w["norm1.bias"], eps=1e-5)
    q = F.linear(query, w["xattn.q.weight"], w["xattn.q.bias"]).reshape(batch, 1, H, head_dim).transpose(1, 2)
    kv = F.linear(context, w["xattn.kv.weight"], w["xattn.kv.bias"]).reshape(batch, length, 2, H, head_dim)
    k, v = kv.permute(2, 0, 3, 1, 4)
    attention = ((q @ k.transpose(-2, -1)) * head_dim**-0.5).softmax(dim=-1)
    y = (attention @ v).transpose(1, 2).reshape(batch, 1, D)
    if apply_proj:
        y = F.linear(y, w["xattn.proj.weight"], w["xattn.proj.bias"])
    pooled = query + y
    hidden = F.gelu(F.linear(F.layer_norm(pooled, (D,), w["norm2.weight"], w["norm2.bias"]), *mlp(w, 1)))
    pooled = pooled + F.linear(hidden, *mlp(w, 2))
    return F.linear(pooled[:, 0], w["linear.weight"], w["linear.bias"])


def mlp(w: dict[str, torch.Tensor], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    return w[f"mlp.fc{layer}.weight"], w[f"mlp.fc{layer}.bias"]


def random_tokens(seed: int = 1, offset: float = 3.0) -> torch.Tensor:
    """Tokens whose mean is far from zero, as backbone tokens often are: the folded attention (docs/step.md) must
    cancel that mean exactly."""
    generator = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(B, T, P, D, generator=generator, dtype=torch.float64) + offset


@pytest.mark.parametrize("output_projection", [False, True])
def test_attentive_from_vjepa_gives_vjepa_logits_in_float64(output_projection):
    state, tokens = vjepa_state_dict(), random_tokens()
    probe = attentive_from_vjepa(
        state, num_heads=H, frames=T, tokens_per_frame=P, output_projection=output_projection
    ).eval()
    expected = vjepa_logits(state, tokens, apply_proj=output_projection)
    assert expected.abs().max() > 1.0  # logits far from zero: a wrong function could not hide in the tolerance
    assert (probe(tokens) - expected).abs().max() <= TOLERANCE
    # The other revision's function is a different one: the projection matters.
    assert (probe(tokens) - vjepa_logits(state, tokens, apply_proj=not output_projection)).abs().max() > 0.1


def test_attentive_from_vjepa_is_the_registry_probe_with_its_state():
    probe = attentive_from_vjepa(vjepa_state_dict(), num_heads=H, frames=T, tokens_per_frame=P)
    built = build_probe("attentive", dim=D, num_classes=C, frames=T, tokens_per_frame=P, cls_index=None, num_heads=H)
    assert type(probe) is type(built) is AttentiveProbe
    ours, theirs = probe.state_dict(), built.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[key].shape == theirs[key].shape for key in ours)
    assert "block.attn.proj.weight" not in ours and "norm.weight" not in ours  # as V-JEPA's forward uses them
    # Depth 1 has no self-attention blocks: the keys of every attentive checkpoint written before depth existed.
    assert not any(key.startswith("blocks.") for key in ours)


def test_attentive_from_vjepa_accepts_a_ddp_prefix_and_refuses_other_layouts():
    state, tokens = vjepa_state_dict(), random_tokens()
    wrapped = {f"module.{key}": value for key, value in state.items()}
    probe = attentive_from_vjepa(wrapped, num_heads=H, frames=T, tokens_per_frame=P).eval()
    assert (probe(tokens) - vjepa_logits(state, tokens, apply_proj=False)).abs().max() <= TOLERANCE
    partial_block = {**state, "pooler.blocks.0.norm1.weight": torch.ones(D, dtype=torch.float64)}
    with pytest.raises(ProbeConfigError, match=r"lacks pooler\.blocks\.0\.attn\.proj\.bias, "):
        attentive_from_vjepa(partial_block, num_heads=H, frames=T, tokens_per_frame=P)
    del state[BLOCK + "xattn.kv.bias"]
    with pytest.raises(ProbeConfigError, match=r"lacks pooler\.cross_attention_block\.xattn\.kv\.bias"):
        attentive_from_vjepa(state, num_heads=H, frames=T, tokens_per_frame=P)


def vjepa2_state_dict(depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A V-JEPA 2 AttentiveClassifier state dict of ``num_probe_blocks=depth``: ``vjepa_state_dict`` without
    ``xattn.proj`` (V-JEPA 2's CrossAttention has none) plus depth − 1 self-attention blocks under its module
    tree's names, ``pooler.blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``."""
    generator = torch.Generator().manual_seed(1000 + seed)
    state = {key: value for key, value in vjepa_state_dict(seed).items() if ".xattn.proj." not in key}
    shapes = {
        "norm1.weight": (D,),
        "norm1.bias": (D,),
        "attn.qkv.weight": (3 * D, D),
        "attn.qkv.bias": (3 * D,),
        "attn.proj.weight": (D, D),
        "attn.proj.bias": (D,),
        "norm2.weight": (D,),
        "norm2.bias": (D,),
        "mlp.fc1.weight": (HIDDEN, D),
        "mlp.fc1.bias": (HIDDEN,),
        "mlp.fc2.weight": (D, HIDDEN),
        "mlp.fc2.bias": (D,),
    }
    for index in range(depth - 1):
        for name, shape in shapes.items():
            unit = 1.0 if name.startswith("norm") and name.endswith("weight") else 0.0  # LayerNorm affines near 1
            noise = 0.3 * torch.randn(shape, generator=generator, dtype=torch.float64)
            state[f"pooler.blocks.{index}.{name}"] = unit + noise
    return state


def vjepa2_logits(state: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """V-JEPA 2's AttentiveClassifier forward (its AttentivePooler.forward: the blocks over the tokens, then the
    cross-attention block) on tokens (B, T, P, D) flattened time-major. Each ``Block``: x + proj(MHSA(norm1(x)))
    with one fused qkv (rows q, k, v; head_dim^-0.5 scale, softmax over all tokens), then
    x + fc2(GELU(fc1(norm2(x))))."""
    x = tokens.flatten(1, 2)
    batch, length, _ = x.shape
    head_dim = D // H
    depth = 1 + len({key.split(".")[2] for key in state if key.startswith("pooler.blocks.")})
    for index in range(depth - 1):
        w = {key.removeprefix(f"pooler.blocks.{index}."): value for key, value in state.items()}
        normed = F.layer_norm(x, (D,), w["norm1.weight"], w["norm1.bias"], eps=1e-5)
        qkv = F.linear(normed, w["attn.qkv.weight"], w["attn.qkv.bias"]).reshape(batch, length, 3, H, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * head_dim**-0.5).softmax(dim=-1)
        y = (attention @ v).transpose(1, 2).reshape(batch, length, D)
        x = x + F.linear(y, w["attn.proj.weight"], w["attn.proj.bias"])
        hidden = F.gelu(F.linear(F.layer_norm(x, (D,), w["norm2.weight"], w["norm2.bias"], eps=1e-5), *mlp(w, 1)))
        x = x + F.linear(hidden, *mlp(w, 2))
    return cross_attention_logits(state, x, apply_proj=False)


def test_attentive_from_vjepa_reads_a_depth_4_vjepa2_classifier_and_gives_its_logits_in_float64():
    state, tokens = vjepa2_state_dict(depth=4), random_tokens()
    wrapped = {f"module.{key}": value for key, value in state.items()}  # V-JEPA 2 saves its DDP-wrapped heads
    probe = attentive_from_vjepa(wrapped, num_heads=H, frames=T, tokens_per_frame=P).eval()
    assert len(probe.blocks) == 3 and probe.block.attn.proj is None
    expected = vjepa2_logits(state, tokens)
    assert expected.abs().max() > 1.0  # logits far from zero: a wrong function could not hide in the tolerance
    assert (probe(tokens) - expected).abs().max() <= TOLERANCE
    # The self-attention blocks matter: without them (the depth-1 function on the same cross-attention weights)
    # the logits are far off.
    assert (vjepa_logits(state, tokens, apply_proj=False) - expected).abs().max() > 0.1
    built = build_probe(
        "attentive", dim=D, num_classes=C, frames=T, tokens_per_frame=P, cls_index=None, num_heads=H, depth=4
    )
    ours, theirs = probe.state_dict(), built.state_dict()
    assert list(ours) == list(theirs) and all(ours[key].shape == theirs[key].shape for key in ours)
    assert "blocks.2.attn.proj.weight" in ours and "blocks.3.norm1.weight" not in ours


def test_attentive_from_vjepa_refuses_gaps_and_strays_among_the_blocks():
    state = vjepa2_state_dict(depth=3)
    gap = {key.replace("pooler.blocks.1.", "pooler.blocks.2."): value for key, value in state.items()}
    with pytest.raises(ProbeConfigError, match=r"has pooler\.blocks \[0, 2\]: expected blocks 0 to 1"):
        attentive_from_vjepa(gap, num_heads=H, frames=T, tokens_per_frame=P)
    stray = {**state, "pooler.blocks.1.attn.q_norm.weight": torch.ones(D, dtype=torch.float64)}
    with pytest.raises(ProbeConfigError, match=r"AttentiveClassifier has not: pooler\.blocks\.1\.attn\.q_norm"):
        attentive_from_vjepa(stray, num_heads=H, frames=T, tokens_per_frame=P)
    with pytest.raises(ProbeConfigError, match="depth=0 must be at least 1"):
        build_probe("attentive", dim=D, num_classes=C, frames=T, tokens_per_frame=P, cls_index=None, depth=0)


def test_attentive_initialisation_at_depth_4_follows_vjepa2():
    torch.manual_seed(0)
    dim = 384
    probe = build_probe("attentive", dim=dim, num_classes=50, frames=2, tokens_per_frame=3, cls_index=0, depth=4)
    # V-JEPA 2's _rescale_blocks: block i's proj and fc2 divided by sqrt(2 (i + 1)); the cross-attention block's
    # fc2 by sqrt(2 · (depth − 1)) (the loop's last layer_id, plus 1). Sample std of 147k-590k entries: 0.1-0.2 %
    # relative error (allowed: 2 %).
    for index, block in enumerate(probe.blocks):
        scale = math.sqrt(2 * (index + 1))
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.02)
        assert block.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.02)
        assert block.attn.proj.weight.std().item() == pytest.approx(0.02 / scale, rel=0.02)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(0.02 / scale, rel=0.02)
        assert block.attn.qkv.bias.abs().max() == 0 and block.norm1.weight.eq(1).all()
    assert probe.block.mlp.fc2.weight.std().item() == pytest.approx(0.02 / math.sqrt(6), rel=0.02)
    assert probe.block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.02)
    bound = 1 / math.sqrt(dim)  # the head: PyTorch's default init, as at depth 1
    assert probe.head.weight.abs().max() <= bound and probe.head.weight.abs().max() > 0.95 * bound


def test_attentive_initialisation_follows_vjepa():
    torch.manual_seed(0)
    dim, classes = 384, 50
    probe = build_probe("attentive", dim=dim, num_classes=classes, frames=2, tokens_per_frame=3, cls_index=0)
    block = probe.block
    # Pooler: trunc-normal std 0.02 for the query and every Linear weight, zero biases, unit LayerNorms; fc2 (and
    # proj, where there is one) divided by sqrt(2 · 1). The sample std of n values has a relative error of about
    # 1/sqrt(2n): 3.6 % for the query's 384 (allowed: 15 %), 0.1-0.2 % for the 147k-590k matrix entries (2 %).
    assert probe.query.std().item() == pytest.approx(0.02, rel=0.15)
    for weight in (block.attn.qkv.weight, block.mlp.fc1.weight):
        assert weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert block.mlp.fc2.weight.std().item() == pytest.approx(0.02 / math.sqrt(2), rel=0.02)
    assert block.attn.qkv.bias.abs().max() == 0 and block.mlp.fc2.bias.abs().max() == 0
    assert block.attn.proj is None and not hasattr(probe, "norm")
    # Head: PyTorch's default Linear init, uniform in ±1/sqrt(D) (weights: kaiming_uniform with a = sqrt(5)).
    bound = 1 / math.sqrt(dim)
    assert probe.head.weight.abs().max() <= bound and probe.head.weight.abs().max() > 0.95 * bound
    assert probe.head.bias.abs().max() <= bound and probe.head.bias.abs().max() > 0.5 * bound
    with_projection = build_probe(
        "attentive", dim=dim, num_classes=classes, frames=2, tokens_per_frame=3, cls_index=0, output_projection=True
    )
    assert with_projection.block.attn.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2), rel=0.02)


def test_attentive_options_and_parameter_counts():
    expected = {"num_heads": None, "dropout": 0.0, "mlp_ratio": 4.0, "output_projection": False, "depth": 1}
    assert probe_options("attentive") == expected
    shape = {"dim": 384, "num_classes": 10, "frames": 16, "tokens_per_frame": 257, "cls_index": 0}
    vjepa = count_parameters(build_probe("attentive", **shape), exclude_head=True)
    later = build_probe("attentive", **shape, output_projection=True)
    # Without the head: query D, norm1 2D, qkv 3D² + 3D, norm2 2D, MLP 8D² + 5D; the later jepa revision adds the
    # output projection D² + D; each of V-JEPA 2's self-attention blocks a full block, 12D² + 13D.
    assert vjepa == 11 * 384**2 + 13 * 384
    assert count_parameters(later, exclude_head=True) - vjepa == 384**2 + 384
    deeper = count_parameters(build_probe("attentive", **shape, depth=4), exclude_head=True)
    assert deeper - vjepa == 3 * (12 * 384**2 + 13 * 384)
    for removed in ("query_norm", "final_norm"):  # the earlier probe's differences measured no better: gone
        with pytest.raises(ProbeConfigError, match=f"probe 'attentive' has no option {removed}"):
            build_probe("attentive", **shape, **{removed: True})


def dinov2_linear_logits(
    weight: torch.Tensor, bias: torch.Tensor, tokens: torch.Tensor, use_avgpool: bool
) -> torch.Tensor:
    """DINOv2's LinearClassifier on create_linear_input with use_n_blocks = 1, per frame (the class token,
    with use_avgpool concatenated with the mean of the patch tokens), the frame features averaged over frames."""
    cls, patches = tokens[:, :, 0], tokens[:, :, 1:]
    features = torch.cat([cls, patches.mean(dim=2)], dim=-1) if use_avgpool else cls
    return F.linear(features.mean(dim=1), weight, bias)


@pytest.mark.parametrize("avgpool", [False, True])
def test_linear_without_layer_norm_is_dinov2s_head(avgpool):
    torch.manual_seed(0)
    probe = build_probe(
        "linear", dim=D, num_classes=C, frames=T, tokens_per_frame=P, cls_index=0, avgpool=avgpool, layer_norm=False
    ).double()
    # DINOv2's init: normal with std 0.01, zero bias (2·48·7 = 672 weights: sample std within 15 %).
    assert probe.head.weight.std().item() == pytest.approx(0.01, rel=0.15) and probe.head.bias.abs().max() == 0
    torch.nn.init.normal_(probe.head.weight)
    torch.nn.init.normal_(probe.head.bias)
    tokens = random_tokens()
    expected = dinov2_linear_logits(probe.head.weight, probe.head.bias, tokens, use_avgpool=avgpool)
    assert (probe(tokens) - expected).abs().max() <= TOLERANCE


def test_linear_avgpool_needs_the_cls_and_patch_tokens():
    with pytest.raises(ProbeConfigError, match=r"avgpool=True.*use tokens='all'"):
        build_probe("linear", dim=D, num_classes=C, frames=T, tokens_per_frame=1, cls_index=0, avgpool=True)
    with pytest.raises(ProbeConfigError, match="avgpool=True"):
        build_probe("linear", dim=D, num_classes=C, frames=T, tokens_per_frame=P, cls_index=None, avgpool=True)


def test_runs_of_the_earlier_attentive_probe_are_refused_by_name():
    old_config = {"num_heads": H, "dropout": 0.0, "mlp_ratio": 4.0}  # a config.json from before issue 24
    with pytest.raises(ProbeConfigError, match=r"^runs/a was trained with the attentive probe from before .*train it"):
        recorded_options("attentive", old_config, "runs/a")
    assert recorded_options("attentive", {**old_config, "output_projection": False}, "runs/a")["mlp_ratio"] == 4.0
    assert recorded_options("step", {"depth": 2}) == {"depth": 2}  # other probes: unchanged


def test_cli_records_the_anchor_options_and_every_reader_rebuilds_them(tmp_path):
    import json
    import subprocess
    import sys

    from step_cache.synthetic.tokens import write_token_cache
    from step_cache.training.evaluation import load_probe

    cache = tmp_path / "cache"
    write_token_cache(cache, videos_per_class=4, dim=16)
    runs = {
        "linear": ["--probe", "linear", "--avgpool", "--no-layer-norm"],
        "attentive": ["--probe", "attentive", "--output-projection", "--depth", "2"],
    }
    for name, options in runs.items():
        command = [sys.executable, "-m", "cli", "train-probe", cache, *options, "--out", tmp_path / name]
        result = subprocess.run(
            [*map(str, command), "--epochs", "1", "--batch-size", "4", "--quiet"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
    linear = json.loads((tmp_path / "linear" / "config.json").read_text())
    assert linear["config"]["probe_options"] == {"dropout": 0.0, "avgpool": True, "layer_norm": False}
    assert linear["data"]["tokens"]["subset"] == "all"  # --tokens auto loads the patch tokens avgpool reads
    _, probe = load_probe(tmp_path / "linear")
    assert probe.avgpool and probe.norm is None and probe.head.in_features == 32
    attentive = json.loads((tmp_path / "attentive" / "config.json").read_text())["config"]["probe_options"]
    assert attentive["output_projection"] is True and attentive["depth"] == 2
    _, probe = load_probe(tmp_path / "attentive")
    assert probe.block.attn.proj is not None and len(probe.blocks) == 1
