"""Building blocks shared by the probes: input checks, a vmap-friendly dropout, multi-head attention, MLP and a
pre-norm transformer block.

Everything here must work unchanged under ``torch.func.vmap(functional_call(...))`` over K stacked copies of a
probe (the sweeps train K configurations at once): module state lives only in parameters and buffers, forward
passes have no data-dependent Python control flow, and randomness comes from ``torch.rand_like``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from step_cache.errors import StepCacheError
from step_cache.probes.pooling import attention_pool


class ProbeConfigError(StepCacheError, ValueError):
    """A probe was asked for with an unknown name, an unknown option or an invalid value."""


class ProbeInputError(StepCacheError, ValueError):
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
    Few-query attention (the probes' CLS / pooling rows) does not come here: see ``pooling.attention_pool``.
    """
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head attention with one fused q/k/v projection (3·D² + 3·D) and an output projection (D² + D;
    ``output_projection=False`` leaves it out, as V-JEPA's released attentive pooler does: docs/step.md).

    ``forward(x)`` is self-attention over all tokens. Where only a few rows matter (a pooling query, or the CLS
    row of the last block: all a probe classifies from), ``Block.pool`` computes them far more cheaply with
    ``pooling.attention_pool``.
    """

    def __init__(self, dim: int, num_heads: int, *, output_projection: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim) if output_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, dim // self.num_heads)).permute(2, 0, 3, 1, 4)
        return self.project(attend(q, k, v).transpose(1, 2).reshape(batch, length, dim))

    def project(self, heads_out: torch.Tensor) -> torch.Tensor:
        """The output projection of the concatenated heads (the identity without one)."""
        return heads_out if self.proj is None else self.proj(heads_out)


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

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp: bool,
        mlp_ratio: float,
        dropout: float,
        output_projection: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, output_projection=output_projection)
        self.attn_drop = StackableDropout(dropout)
        self.norm2 = nn.LayerNorm(dim) if mlp else None
        self.mlp = MLP(dim, mlp_ratio) if mlp else None
        self.mlp_drop = StackableDropout(dropout) if mlp else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention over all tokens of x (B, N, D)."""
        x = x + self.attn_drop(self.attn(self.norm1(x)))
        return self._mlp(x)

    def pool(
        self,
        queries: torch.Tensor,
        tokens: torch.Tensor,
        frame_pos: torch.Tensor | None = None,
        *,
        include_queries: bool,
        query_norm: bool = True,
    ) -> torch.Tensor:
        """The block's output for the query rows (B, L, D) only, the context being [queries if
        include_queries; tokens (B, T, P, D) + frame_pos (T, D)] — what ``forward`` gives on that sequence
        for those rows (a CLS token: include it; a pooling query: do not), at a fraction of the cost.
        ``query_norm=False``: the queries reach the q projection without ``norm1`` (V-JEPA's cross-attention
        block normalises only the context)."""
        pooled = attention_pool(
            self.attn, self.norm1, queries, tokens, frame_pos, include_queries=include_queries, query_norm=query_norm
        )
        return self._mlp(queries + self.attn_drop(pooled))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return x
        return x + self.mlp_drop(self.mlp(self.norm2(x)))


def cls_readout(
    blocks: nn.ModuleList, cls: torch.Tensor, tokens: torch.Tensor, frame_pos: torch.Tensor | None = None
) -> torch.Tensor:
    """CLS output (B, D) of the blocks over [cls (B, 1, D); tokens (B, T, P, D) + frame_pos (T, D)]. The last
    block computes only the CLS row; with one block the (B, T·P, D) sequence is never built at all."""
    if len(blocks) > 1:
        x = tokens if frame_pos is None else tokens + frame_pos[:, None]
        x = torch.cat([cls, x.flatten(1, 2)], dim=1)
        for block in blocks[:-1]:
            x = block(x)
        cls, tokens, frame_pos = x[:, :1], x[:, None, 1:], None
    return blocks[-1].pool(cls, tokens, frame_pos, include_queries=True)[:, 0]


def init_probe_weights(module: nn.Module) -> None:
    """ViT-style init: trunc-normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.trunc_normal_(sub.weight, std=0.02)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


class ProbeShape(TypedDict):
    """The cache's token layout a probe is built for: the keyword arguments every probe constructor takes (as
    ``**shape``) besides its options. Tokens are (B, T=frames, P=tokens_per_frame, D=dim); ``cls_index`` is the CLS
    token's place among a frame's P tokens (None: the tokens have none); C=num_classes."""

    dim: int
    num_classes: int
    frames: int
    tokens_per_frame: int
    cls_index: int | None


SHAPE_ARGUMENTS = tuple(ProbeShape.__annotations__)


def check_probe_shape(shape: Mapping[str, Any]) -> ProbeShape:
    """``shape`` (a probe constructor's ``**shape``) checked: every shape argument given, no other, each valid."""
    missing = [name for name in SHAPE_ARGUMENTS if name not in shape]
    unknown = sorted(set(shape) - set(SHAPE_ARGUMENTS))
    if missing or unknown:  # what Python says of a missing or unexpected keyword argument
        raise TypeError(f"probe shape: missing {missing or 'nothing'}, unexpected {unknown or 'nothing'}")
    for name in ("dim", "num_classes", "frames"):
        if shape[name] < 1:
            raise ProbeConfigError(f"{name}={shape[name]} must be at least 1")
    tokens_per_frame, cls_index = shape["tokens_per_frame"], shape["cls_index"]
    if tokens_per_frame < 1:
        raise ProbeConfigError(f"tokens_per_frame={tokens_per_frame} must be at least 1")
    if cls_index is not None and not 0 <= cls_index < tokens_per_frame:
        raise ProbeConfigError(f"cls_index={cls_index} must be None or in [0, tokens_per_frame={tokens_per_frame})")
    return ProbeShape(**{name: shape[name] for name in SHAPE_ARGUMENTS})


class AttentionOptions(TypedDict, total=False):
    """The options every attention probe (attentive, self-attentive, STEP) takes, defaults in ATTENTION_DEFAULTS."""

    num_heads: int | None
    dropout: float
    mlp_ratio: float


class AttentionProbeArguments(ProbeShape, AttentionOptions):
    """An attention probe constructor's ``**kwargs``: the shape and the shared options."""


ATTENTION_DEFAULTS: dict[str, Any] = {"num_heads": None, "dropout": 0.0, "mlp_ratio": 4.0}  # heads None: D // 64


class AttentionProbe(nn.Module):
    """The base of the attention probes (attentive, self-attentive, STEP): the options they share, declared once."""

    shared_options = ATTENTION_DEFAULTS  # probes.probe_options lists them before a probe's own options

    @staticmethod
    def split_arguments(kwargs: Mapping[str, Any]) -> tuple[ProbeShape, dict[str, Any]]:
        """A constructor's ``**kwargs`` as its checked shape and the shared options (defaults filled in, the number
        of heads resolved for the width)."""
        shape = check_probe_shape({k: v for k, v in kwargs.items() if k not in ATTENTION_DEFAULTS})
        options = {name: kwargs.get(name, default) for name, default in ATTENTION_DEFAULTS.items()}
        return shape, {**options, "num_heads": resolve_num_heads(shape["dim"], options["num_heads"])}
