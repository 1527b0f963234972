"""Load a V-JEPA ``AttentiveClassifier`` (facebookresearch/jepa, depth 1) into this project's ``attentive`` probe.

V-JEPA's key names map one to one onto ours, except that its cross-attention has separate ``q`` and ``kv``
projections where ours has one fused ``qkv`` (rows: q, then k, then v — the order of V-JEPA's ``kv`` rows).
"""

from __future__ import annotations

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


def attentive_from_vjepa(
    state_dict: Mapping[str, torch.Tensor],
    *,
    num_heads: int,
    frames: int,
    tokens_per_frame: int,
    output_projection: bool = False,
) -> AttentiveProbe:
    """The ``build_probe("attentive", ...)`` module holding the weights of a V-JEPA ``AttentiveClassifier``
    state dict (depth 1, ``complete_block=True``, as V-JEPA's frozen evaluation saves it; a DDP ``module.``
    prefix is accepted). It gives V-JEPA's logits for tokens (B, T, P, D) flattened time-major, in the state
    dict's dtype.

    ``xattn.proj`` is accepted and ignored by default: the released V-JEPA code creates it but never applies
    it. ``output_projection=True`` loads and applies it (jepa after its pull request 17)."""
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    _check_keys(state, output_projection)
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
    ).to(query.dtype)
    ours = {name: state[theirs] for name, theirs in _RENAMES.items()}
    q_weight, q_bias, kv_weight, kv_bias = (state[key] for key in _QKV)
    ours["block.attn.qkv.weight"] = torch.cat([q_weight, kv_weight])
    ours["block.attn.qkv.bias"] = torch.cat([q_bias, kv_bias])
    if output_projection:
        ours["block.attn.proj.weight"], ours["block.attn.proj.bias"] = (state[_BLOCK + k] for k in _PROJECTION)
    probe.load_state_dict(ours)
    return probe


def _check_keys(state: Mapping[str, torch.Tensor], output_projection: bool) -> None:
    if any(key.startswith("pooler.blocks.") for key in state):
        raise ProbeConfigError("V-JEPA state dict has pooler.blocks.*: only depth 1 attentive classifiers load")
    expected = {*_RENAMES.values(), *_QKV}
    projection = {_BLOCK + key for key in _PROJECTION}
    if output_projection:
        expected |= projection
    missing = sorted(expected - set(state))
    if missing:
        raise ProbeConfigError(f"V-JEPA state dict lacks {', '.join(missing)} (an AttentiveClassifier's keys)")
    unexpected = sorted(set(state) - expected - projection)
    if unexpected:
        raise ProbeConfigError(f"V-JEPA state dict has keys an AttentiveClassifier has not: {', '.join(unexpected)}")
