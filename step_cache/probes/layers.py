"""Building blocks shared by the probes: input checks, a vmap-friendly dropout, multi-head attention, MLP and a
pre-norm transformer block.

Everything here must work unchanged under ``torch.func.vmap(functional_call(...))`` over K stacked copies of a
probe (the sweeps train K configurations at once): module state lives only in parameters and buffers, forward
passes have no data-dependent Python control flow, and randomness comes from ``torch.rand_like``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProbeConfigError(ValueError):
    """A probe was asked for with an unknown name, an unknown option or an invalid value."""


class ProbeInputError(ValueError):
    """Tokens handed to a probe do not have the shape it was built for."""


def default_num_heads(dim: int) -> int:
    """D // 64 heads (64 channels per head, as in ViTs), at least one, lowered until it divides D."""
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


def resolve_num_heads(dim: int, num_heads: int | None) -> int:
    if num_heads is None:
        return default_num_heads(dim)
    if num_heads < 1 or dim % num_heads:
        raise ProbeConfigError(f"num_heads={num_heads} must be a positive divisor of the token width D={dim}")
    return num_heads


def check_tokens(tokens: torch.Tensor, dim: int, frames: int | None = None) -> None:
    """Raise ProbeInputError unless tokens are (B, T, P, D) with the probe's D (and T, when the probe needs it)."""
    if tokens.ndim != 4:
        raise ProbeInputError(f"probe expects tokens of shape (B, T, P, D), got shape {tuple(tokens.shape)}")
    if tokens.shape[-1] != dim:
        raise ProbeInputError(f"probe was built for token width D={dim}, got tokens of shape {tuple(tokens.shape)}")
    if frames is not None and tokens.shape[1] != frames:
        raise ProbeInputError(
            f"probe was built for T={frames} frames (its frame embedding has one row per frame), "
            f"got tokens of shape {tuple(tokens.shape)}"
        )


def as_dtype_of(tokens: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """Cache tokens may be float16; compute in the probe's parameter dtype."""
    return tokens.to(parameter.dtype)


class StackableDropout(nn.Module):
    """Inverted dropout whose rate is a (non-persistent) buffer rather than a Python float.

    Stacking K probes with ``torch.func.stack_module_state`` then stacks the rates too, so every member of a
    vmapped sweep drops with its own rate. The mask comes from ``torch.rand_like``, which honours
    ``vmap(..., randomness='different')``. A rate of 0 keeps every element (``rand >= 0`` always holds), so the
    layer is exactly the identity then, and it is always the identity in eval mode.
    """

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(rate) < 1.0:
            raise ProbeConfigError(f"dropout={rate} must be in [0, 1)")
        self.register_buffer("rate", torch.tensor(float(rate)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        rate = self.rate.to(x.dtype)
        keep = (torch.rand_like(x) >= rate).to(x.dtype)
        return x * keep / (1.0 - rate)

    def extra_repr(self) -> str:
        return "rate=<buffer>" if self.rate.is_meta else f"rate={float(self.rate):g}"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention on (B, H, L, hd) queries and (B, H, S, hd) keys/values, for full self-attention.

    SDPA never materialises the L × S scores. On CUDA its flash / memory-efficient kernels have vmap batching
    rules. On CPU (torch 2.14) the kernel has none, so under vmap it falls back to a loop over members with a
    UserWarning; measured at K=8, 6 heads × 64, 257 × 1577 (L × S): fallback 194 ms, Python loop 183 ms, and an
    explicit matmul/softmax 689 ms under vmap (it materialises the scores) — so SDPA stays, warning and all.
    Few-query attention (the probes' CLS / pooling rows) does not come here: see ``Attention._few_queries``.
    """
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head attention with one fused q/k/v projection (3·D² + 3·D) and an output projection (D² + D).

    ``forward(queries, context)``: when ``queries is context`` it is self-attention (one fused matmul).
    Otherwise few queries attend over a long context — a pooling query, or the CLS row of a probe's last block
    (all it classifies from) — and the key/value projections are folded into the queries (see
    ``_few_queries``): the same function with no O(N·D²) projection of the N context tokens.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, num_queries, dim = queries.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        if queries is context:
            q, k, v = self.qkv(context).unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4)
            out = attend(q, k, v).transpose(1, 2).reshape(batch, num_queries, dim)
        elif num_queries * heads <= dim:
            out = self._few_queries(queries, context)
        else:
            w_q, w_kv = self.qkv.weight.split([dim, 2 * dim])
            b_q, b_kv = self.qkv.bias.split([dim, 2 * dim])
            q = F.linear(queries, w_q, b_q).unflatten(-1, (heads, head_dim)).transpose(1, 2)
            k, v = F.linear(context, w_kv, b_kv).unflatten(-1, (2, heads, head_dim)).permute(2, 0, 3, 1, 4)
            out = attend(q, k, v).transpose(1, 2).reshape(batch, num_queries, dim)
        return self.proj(out)

    def _few_queries(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attention of L queries over N context tokens h_j without projecting the context:
        q·(W_k h_j + b_k) = (W_kᵀ q)·h_j + const, and the constant cancels in the softmax; and
        Σ_j a_j (W_v h_j + b_v) = W_v (Σ_j a_j h_j) + b_v since the weights a_j sum to 1. Token-side cost is
        O(H·L·N·D) instead of O(N·D²) — about 100x less for one query at D=384 — which is what makes
        one-block probes over 16 × 257 tokens cheap, vmapped or not."""
        _, num_queries, dim = queries.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        w_q, w_k, w_v = self.qkv.weight.split(dim)
        b_q, _, b_v = self.qkv.bias.split(dim)
        q = F.linear(queries, w_q, b_q).unflatten(-1, (heads, head_dim))  # (B, L, H, hd)
        per_head = (heads, head_dim)
        # Heads and queries share one row axis so both products are plain (B, H·L, ·) batched matmuls: a
        # broadcast over a separate head axis would copy the (B, N, D) context once per head.
        q_in_context = torch.einsum("blhe,hed->bhld", q * head_dim**-0.5, w_k.unflatten(0, per_head))
        scores = q_in_context.flatten(1, 2) @ context.transpose(-2, -1)  # (B, H·L, N)
        pooled = (scores.softmax(dim=-1) @ context).unflatten(1, (heads, num_queries))  # (B, H, L, D)
        return torch.einsum("bhld,hed->blhe", pooled, w_v.unflatten(0, per_head)).flatten(2) + b_v


class MLP(nn.Module):
    """Linear -> GELU -> Linear with hidden width ``mlp_ratio · D`` (8·D² + 5·D parameters at ratio 4)."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise ProbeConfigError(f"mlp_ratio={mlp_ratio} must be positive")
        hidden = round(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)) [+ MLP(LN(x))]. With ``mlp=False`` it is the attention
    sub-layer alone (STEP's simplified block: ~1/3 of the full block's parameters)."""

    def __init__(self, dim: int, num_heads: int, *, mlp: bool, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.attn_drop = StackableDropout(dropout)
        self.norm2 = nn.LayerNorm(dim) if mlp else None
        self.mlp = MLP(dim, mlp_ratio) if mlp else None
        self.mlp_drop = StackableDropout(dropout) if mlp else None

    def forward(self, x: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over x; or, given ``queries``, update only the queries, attending over x (which may
        contain them, e.g. a CLS token, or not, e.g. a pooling query) — the result has the queries' length."""
        context = self.norm1(x)
        if queries is None:
            out = x + self.attn_drop(self.attn(context, context))
        else:
            out = queries + self.attn_drop(self.attn(self.norm1(queries), context))
        if self.mlp is not None:
            out = out + self.mlp_drop(self.mlp(self.norm2(out)))
        return out


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, *, first_row_only: bool) -> torch.Tensor:
    """Run the blocks over x (B, N, D). With ``first_row_only`` the last block computes only row 0 (the CLS
    token, all a CLS-classifier reads): attention cost O(N) instead of O(N²), same result. Returns (B, N', D)."""
    for block in blocks[:-1]:
        x = block(x)
    return blocks[-1](x, queries=x[:, :1]) if first_row_only else blocks[-1](x)


def init_probe_weights(module: nn.Module) -> None:
    """ViT-style init: trunc-normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.trunc_normal_(sub.weight, std=0.02)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def check_probe_shape(*, dim: int, num_classes: int, frames: int, tokens_per_frame: int, cls_index: int | None) -> None:
    """Validate the shape arguments every probe constructor takes."""
    for name, value in (("dim", dim), ("num_classes", num_classes), ("frames", frames)):
        if value < 1:
            raise ProbeConfigError(f"{name}={value} must be at least 1")
    if tokens_per_frame < 1:
        raise ProbeConfigError(f"tokens_per_frame={tokens_per_frame} must be at least 1")
    if cls_index is not None and not 0 <= cls_index < tokens_per_frame:
        raise ProbeConfigError(f"cls_index={cls_index} must be None or in [0, tokens_per_frame={tokens_per_frame})")
