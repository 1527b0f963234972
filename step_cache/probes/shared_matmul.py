"""Products of small per-probe operands with the (large) cached tokens, such that K probes vmapped over stacked
parameters read the tokens once instead of each multiplying its own broadcast copy.

functorch's batching rule for a batched matmul expands an unbatched operand to K copies before multiplying
(it materialises them: a (K, B, T·P, D) copy of the clip's tokens per product, forwards and backwards). When only
the small operand carries the vmap dimension, folding K into its rows is the same product without the copy:
(B, K·R, D) @ (B, D, N). The two autograd Functions below do that in their ``vmap`` rules; their backward
passes are each other, so gradients of the small operand keep the shared form too.

Under autocast the forward product runs in the autocast dtype (bf16) while the saved inputs keep theirs (fp32),
and backward runs without autocast: the backward products therefore cast their operands to the dtype the forward
computed in (as autocast's own backward does), and each gradient is returned in its input's dtype.

Measured (torch 2.14 CPU, K=8, B=8, R=6, N=2056, D=384, softmax-attention forward + backward): 0.19 s with
these, 0.44 s for a Python loop over members, 0.71 s with vmap's default rule.
"""

from __future__ import annotations

from typing import Any

import torch


def _batched(tensor: torch.Tensor, bdim: int | None, size: int) -> torch.Tensor:
    return tensor.movedim(bdim, 0) if bdim is not None else tensor.expand(size, *tensor.shape)


def _fold_members(small: torch.Tensor, bdim: int) -> torch.Tensor:
    """(..., R, D) with the member axis at ``bdim`` -> (..., K·R, D), members next to the rows."""
    return small.movedim(bdim, -3).flatten(-3, -2)


def _save(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)
    ctx.compute_dtype = output.dtype  # the autocast dtype when the forward ran under autocast
    ctx.input_dtypes = tuple(tensor.dtype for tensor in inputs)


def _saved_in_compute_dtype(ctx: Any) -> list[torch.Tensor]:
    return [tensor.to(ctx.compute_dtype) for tensor in ctx.saved_tensors]


def _in_input_dtypes(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    return tuple(None if g is None else g.to(dtype) for g, dtype in zip(grads, ctx.input_dtypes, strict=True))


class _Scores(torch.autograd.Function):
    """q (..., R, D) · tokens (..., N, D) -> (..., R, N)."""

    @staticmethod
    def forward(q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return q @ tokens.transpose(-2, -1)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
        _save(ctx, inputs, output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        (q, tokens), grad = _saved_in_compute_dtype(ctx), grad.to(ctx.compute_dtype)
        grad_q = _Weighted.apply(grad, tokens) if ctx.needs_input_grad[0] else None
        grad_tokens = grad.transpose(-2, -1) @ q if ctx.needs_input_grad[1] else None
        return _in_input_dtypes(ctx, grad_q, grad_tokens)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, int | None], q: torch.Tensor, tokens: torch.Tensor) -> Any:
        q_dim, tokens_dim = in_dims
        if tokens_dim is None:
            out = (_fold_members(q, q_dim) @ tokens.transpose(-2, -1)).unflatten(-2, (info.batch_size, -1))
            return out, out.dim() - 3
        return _Scores.apply(_batched(q, q_dim, info.batch_size), _batched(tokens, tokens_dim, info.batch_size)), 0


class _Weighted(torch.autograd.Function):
    """weights (..., R, N) · tokens (..., N, D) -> (..., R, D)."""

    @staticmethod
    def forward(weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return weights @ tokens

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
        _save(ctx, inputs, output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        (weights, tokens), grad = _saved_in_compute_dtype(ctx), grad.to(ctx.compute_dtype)
        grad_weights = _Scores.apply(grad, tokens) if ctx.needs_input_grad[0] else None
        grad_tokens = weights.transpose(-2, -1) @ grad if ctx.needs_input_grad[1] else None
        return _in_input_dtypes(ctx, grad_weights, grad_tokens)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, int | None], weights: torch.Tensor, tokens: torch.Tensor) -> Any:
        weights_dim, tokens_dim = in_dims
        if tokens_dim is None:
            out = (_fold_members(weights, weights_dim) @ tokens).unflatten(-2, (info.batch_size, -1))
            return out, out.dim() - 3
        pair = _batched(weights, weights_dim, info.batch_size), _batched(tokens, tokens_dim, info.batch_size)
        return _Weighted.apply(*pair), 0


def token_scores(q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``q @ tokens.mT``: (..., R, D), (..., N, D) -> (..., R, N); vmapped members share ``tokens``."""
    return _Scores.apply(q, tokens)


def weighted_tokens(weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``weights @ tokens``: (..., R, N), (..., N, D) -> (..., R, D); vmapped members share ``tokens``."""
    return _Weighted.apply(weights, tokens)
