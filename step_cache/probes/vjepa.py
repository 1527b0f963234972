"""Load a V-JEPA or V-JEPA 2 ``AttentiveClassifier`` (facebookresearch/jepa at depth 1, facebookresearch/vjepa2 at
any depth: its ``num_probe_blocks``) into this project's ``attentive`` probe.

The anchors' key names map one to one onto ours, except that their cross-attention has separate ``q`` and ``kv``
projections where ours has one fused ``qkv`` (rows: q, then k, then v — the order of the anchors' ``kv`` rows).
V-JEPA 2's self-attention blocks ``pooler.blocks.<i>.*`` are our ``blocks.<i>.*`` under the same names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from step_cache.probes.attentive import AttentiveProbe
from step_cache.probes.layers import ProbeConfigError

_BLOCK = "pooler.cross_attention_block."
_PROJECTION = ("xattn.proj.weight", "xattn.proj.bias")
# Ours <- V-JEPA's (after the block prefix); the fused qkv is assembled separately.
_RENAMES = {
    "query": "pooler.query_tokens",
    "block.norm1.weight": _BLOCK + "norm1.weight",
    "block.norm1.bias": _BLOCK + "norm1.bias",
    "block.norm2.weight": _BLOCK + "norm2.weight",
    "block.norm2.bias": _BLOCK + "norm2.bias",
    "block.mlp.fc1.weight": _BLOCK + "mlp.fc1.weight",
    "block.mlp.fc1.bias": _BLOCK + "mlp.fc1.bias",
    "block.mlp.fc2.weight": _BLOCK + "mlp.fc2.weight",
    "block.mlp.fc2.bias": _BLOCK + "mlp.fc2.bias",
    "head.weight": "linear.weight",
    "head.bias": "linear.bias",
}
_QKV = tuple(_BLOCK + f"xattn.{name}" for name in ("q.weight", "q.bias", "kv.weight", "kv.bias"))
# The parameters of one of V-JEPA 2's self-attention blocks (``Block``: norm1, attn.qkv, attn.proj, norm2, mlp),
# named alike in ours.
_SELF_BLOCK = tuple(
    f"{module}.{kind}"
    for module in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for kind in ("weight", "bias")
)
_SELF_BLOCK_INDEX = re.compile(r"pooler\.blocks\.(\d+)\.")


def attentive_from_vjepa(
    state_dict: Mapping[str, torch.Tensor],
    *,
    num_heads: int,
    frames: int,
    tokens_per_frame: int,
    output_projection: bool = False,
) -> AttentiveProbe:
    """The ``build_probe("attentive", ...)`` module holding the weights of a V-JEPA or V-JEPA 2
    ``AttentiveClassifier`` state dict (``complete_block=True``, as their frozen evaluations save it; a DDP
    ``module.`` prefix is accepted). Its depth is read from the ``pooler.blocks.<i>`` keys (V-JEPA 2's
    ``num_probe_blocks`` − 1 self-attention blocks; none at depth 1). It gives the anchor's logits for tokens
    (B, T, P, D) flattened time-major, in the state dict's dtype.

    ``xattn.proj`` is accepted and ignored by default: the released V-JEPA code creates it but never applies
    it (V-JEPA 2 does not create it). ``output_projection=True`` loads and applies it (jepa after its pull
    request 17)."""
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    depth = 1 + _self_block_count(state)
    _check_keys(state, output_projection, depth)
    query, classifier = state["pooler.query_tokens"], state["linear.weight"]
    dim, hidden = query.shape[-1], state[_BLOCK + "mlp.fc1.weight"].shape[0]
    probe = AttentiveProbe(  # what build_probe("attentive", ...) builds, with these options
        dim=dim,
        num_classes=classifier.shape[0],
        frames=frames,
        tokens_per_frame=tokens_per_frame,
        cls_index=None,
        num_heads=num_heads,
        mlp_ratio=hidden / dim,
        output_projection=output_projection,
        depth=depth,
    ).to(query.dtype)
    ours = {name: state[theirs] for name, theirs in _RENAMES.items()}
    q_weight, q_bias, kv_weight, kv_bias = (state[key] for key in _QKV)
    ours["block.attn.qkv.weight"] = torch.cat([q_weight, kv_weight])
    ours["block.attn.qkv.bias"] = torch.cat([q_bias, kv_bias])
    if output_projection:
        ours["block.attn.proj.weight"], ours["block.attn.proj.bias"] = (state[_BLOCK + k] for k in _PROJECTION)
    for index in range(depth - 1):
        ours.update({f"blocks.{index}.{name}": state[f"pooler.blocks.{index}.{name}"] for name in _SELF_BLOCK})
    probe.load_state_dict(ours)
    return probe


def _self_block_count(state: Mapping[str, torch.Tensor]) -> int:
    """How many ``pooler.blocks.<i>`` the state dict holds; refused unless they are numbered 0 .. n − 1."""
    indices = {int(match.group(1)) for key in state if (match := _SELF_BLOCK_INDEX.match(key))}
    if indices != set(range(len(indices))):
        raise ProbeConfigError(
            f"V-JEPA state dict has pooler.blocks {sorted(indices)}: expected blocks 0 to {len(indices) - 1}"
        )
    return len(indices)


def _check_keys(state: Mapping[str, torch.Tensor], output_projection: bool, depth: int) -> None:
    expected = {*_RENAMES.values(), *_QKV}
    expected |= {f"pooler.blocks.{index}.{name}" for index in range(depth - 1) for name in _SELF_BLOCK}
    projection = {_BLOCK + key for key in _PROJECTION}
    if output_projection:
        expected |= projection
    missing = sorted(expected - set(state))
    if missing:
        raise ProbeConfigError(f"V-JEPA state dict lacks {', '.join(missing)} (an AttentiveClassifier's keys)")
    unexpected = sorted(set(state) - expected - projection)
    if unexpected:
        raise ProbeConfigError(f"V-JEPA state dict has keys an AttentiveClassifier has not: {', '.join(unexpected)}")
