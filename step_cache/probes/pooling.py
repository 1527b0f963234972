"""Attention pooling over a clip's tokens without materialising anything per token and per probe.

The probes classify from a few rows only — a pooling query, or the CLS row of the last block — and those rows
attend over all N = T·P tokens h_j = LayerNorm(x_j + e_t) (e_t: STEP's frame embedding of token j's frame).
Written naively, each probe projects all N tokens to keys and values (O(N·D²)), and under vmap each of K sweep
members also materialises its own copy of x + e and of the LayerNorm output. Here the same function is computed
from matmuls against the cached tokens x themselves:

* keys:   q·(W_k h_j + b_k) = (γ ⊙ W_kᵀq)·n_j + const, the constant cancels in the softmax (γ, β: LayerNorm
  affine, n_j = (x_j + e_t − μ_j)·r_j the normalised token, r_j = 1/σ_j);
* values: Σ_j a_j (W_v h_j + b_v) = W_v (γ ⊙ Σ_j a_j n_j + β) + b_v, as the weights a_j sum to 1;
* and q̃·n_j = r_j (q̃·x_j + q̃·e_t − μ_j Σ_d q̃_d), with μ_j, σ_j of x_j + e_t obtained from the statistics of
  x_j and one dot product x_j·e_t.

Token-side cost is O(H·L·N·D) for H heads and L queries, versus O(N·D²) naively, and every product with x goes
through shared_matmul, so K vmapped members share one read of x and never copy it. Measured in docs/step.md.
The token-side part runs in float32 even under autocast (see ``_pool_normed_tokens``); a float64 probe keeps float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from step_cache.probes.shared_matmul import token_scores, weighted_tokens


def frame_token_stats(
    tokens: torch.Tensor, frame_pos: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and reciprocal std over channels of tokens (B, T, P, D) + frame_pos (T, D): each (B, T, P).

    Always in float32, also under autocast: var(x + e) is assembled from several terms, which half precision
    would cancel badly."""
    with torch.autocast(tokens.device.type, enabled=False):
        wide = _at_least_float32(tokens.dtype)
        return _frame_token_stats(tokens.to(wide), None if frame_pos is None else frame_pos.to(wide), eps)


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs; float64 stays float64 (a float64 probe computes in float64)."""
    return torch.promote_types(dtype, torch.float32)


def _frame_token_stats(
    tokens: torch.Tensor, frame_pos: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    mean = tokens.mean(dim=-1)
    var = tokens.var(dim=-1, correction=0)
    if frame_pos is not None:
        pos_mean = frame_pos.mean(dim=-1)[:, None]  # (T, 1)
        # var(x + e) = var(x) + var(e) + 2·cov(x, e); cov from one dot product per token.
        per_frame = frame_pos[:, None].expand(tokens.shape[0], -1, -1, -1)  # (B, T, 1, D)
        cross = token_scores(per_frame, tokens).squeeze(-2) / tokens.shape[-1]  # x_j · e_t / D
        var = var + frame_pos.var(dim=-1, correction=0)[:, None] + 2 * (cross - mean * pos_mean)
        mean = mean + pos_mean
    return mean, torch.rsqrt(var + eps)


def _pool_normed_tokens(
    q_tokens: torch.Tensor,
    normed_queries: torch.Tensor,
    tokens: torch.Tensor,
    frame_pos: torch.Tensor | None,
    eps: float,
    include_queries: bool,
) -> torch.Tensor:
    """Σ_j a_j n_j (B, R, D) for the query rows q_tokens (B, R, D) (rows: heads x queries), the a_j being the
    softmax of q_tokens·n_j over the context [normed_queries if include_queries; normalised tokens].

    Always in float32, also under autocast: the scores r_j (q̃·x_j − μ_j Σ q̃) and the pooled Σ a_j r_j x_j −
    Σ a_j r_j μ_j subtract large, nearly equal terms when the tokens' mean is far from zero, which bf16
    products cancel badly (6.8 % error at a mean offset of 5 in bf16; tests/test_autocast.py). These products
    are O(H·L·N·D), small next to anything that projects the tokens."""
    with torch.autocast(tokens.device.type, enabled=False):
        wide = _at_least_float32(q_tokens.dtype)
        q_tokens, normed_queries, tokens = q_tokens.to(wide), normed_queries.to(wide), tokens.to(wide)
        frame_pos = None if frame_pos is None else frame_pos.to(wide)
        num_queries = normed_queries.shape[1]
        mean, rstd = frame_token_stats(tokens, frame_pos, eps)  # (B, T, P)
        flat_tokens = tokens.flatten(1, 2)  # (B, N, D)
        raw = token_scores(q_tokens, flat_tokens).unflatten(-1, tokens.shape[1:3])  # (B, R, T, P)
        if frame_pos is not None:
            raw = raw + torch.einsum("brd,td->brt", q_tokens, frame_pos)[..., None]
        scores = ((raw - mean[:, None] * q_tokens.sum(dim=-1)[..., None, None]) * rstd[:, None]).flatten(2)
        if include_queries:
            scores = torch.cat([q_tokens @ normed_queries.transpose(-2, -1), scores], dim=-1)  # (B, R, L + N)
        weights = scores.softmax(dim=-1)
        if include_queries:
            query_weights, weights = weights.split([num_queries, weights.shape[-1] - num_queries], dim=-1)

        token_weights = weights.unflatten(-1, tokens.shape[1:3]) * rstd[:, None]  # (B, R, T, P): a_j · r_j
        pooled = weighted_tokens(token_weights.flatten(2), flat_tokens)
        pooled = pooled - (token_weights * mean[:, None]).sum(dim=(-2, -1))[..., None]
        if frame_pos is not None:
            pooled = pooled + torch.einsum("brt,td->brd", token_weights.sum(dim=-1), frame_pos)
        if include_queries:
            pooled = pooled + query_weights @ normed_queries
        return pooled


def attention_pool(
    attn: nn.Module,
    norm: nn.LayerNorm,
    queries: torch.Tensor,
    tokens: torch.Tensor,
    frame_pos: torch.Tensor | None = None,
    *,
    include_queries: bool,
    query_norm: bool = True,
) -> torch.Tensor:
    """``attn`` (an Attention) of queries (B, L, D) over context = [queries if include_queries;
    tokens (B, T, P, D) + frame_pos (T, D)], where queries and context first pass through ``norm`` — exactly
    ``attn`` applied to the LayerNormed, concatenated sequence, for the query rows only. Returns (B, L, D).
    With ``query_norm=False`` the q projection reads the queries as they are (the context is still normed)."""
    batch, num_queries, dim = queries.shape
    heads, head_dim = attn.num_heads, dim // attn.num_heads
    gamma, beta = norm.weight, norm.bias
    w_q, w_k, w_v = attn.qkv.weight.split(dim)
    b_q, _, b_v = attn.qkv.bias.split(dim)
    per_head = (heads, head_dim)

    normed_queries = F.layer_norm(queries, (dim,), eps=norm.eps)
    q_input = normed_queries * gamma + beta if query_norm else queries
    q = F.linear(q_input, w_q, b_q).unflatten(-1, per_head).transpose(1, 2)  # (B, H, L, hd)
    # Queries mapped into token space; heads and queries share one row axis R = H·L.
    q_tokens = torch.einsum("bhle,hed->bhld", q * head_dim**-0.5, w_k.unflatten(0, per_head)) * gamma
    q_tokens = q_tokens.flatten(1, 2)  # (B, R, D)

    pooled = _pool_normed_tokens(q_tokens, normed_queries, tokens, frame_pos, norm.eps, include_queries)
    pooled = (pooled.to(queries.dtype) * gamma + beta).unflatten(1, (heads, num_queries))  # (B, H, L, D)
    out = torch.einsum("bhld,hed->blhe", pooled, w_v.unflatten(0, per_head)).reshape(batch, num_queries, dim)
    return attn.project(out + b_v)
