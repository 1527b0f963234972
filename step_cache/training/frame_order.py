"""Frame-order perturbations used by the order metrics (reversed / shuffled frames), in one place so training,
evaluation, sweeps and reports all perturb clips the same way.

A permutation ``p`` of length T reorders a clip's frames: frame t of the result is frame ``p[t]`` of the input.
"""

from __future__ import annotations

import numpy as np
import torch

from step_cache.errors import InputError

SHUFFLE_SEED = 1234  # fixed, so "shuffled accuracy" is comparable across runs and probes


def reversed_order(frames: int) -> np.ndarray:
    return np.arange(frames)[::-1].copy()


def shuffled_order(frames: int, seed: int = SHUFFLE_SEED) -> np.ndarray:
    """A fixed pseudo-random permutation that differs from both the identity and the reversal when T > 2."""
    rng = np.random.default_rng(seed)
    identity, reverse = np.arange(frames), reversed_order(frames)
    for _ in range(1000):
        order = rng.permutation(frames)
        if frames <= 2 or not (np.array_equal(order, identity) or np.array_equal(order, reverse)):
            return order
    raise AssertionError("unreachable: a random permutation of T > 2 frames keeps missing two of T! orders")


ORDERS = {"reversed": reversed_order, "shuffled": shuffled_order}


def frame_order(name: str, frames: int) -> np.ndarray | None:
    """The named perturbation ("original" -> None, "reversed", "shuffled") for T frames."""
    if name == "original":
        return None
    try:
        return ORDERS[name](frames)
    except KeyError:
        raise InputError(f"unknown frame order {name!r}; choose original, {', '.join(ORDERS)}") from None


def permute_frames(tokens: torch.Tensor | np.ndarray, order: np.ndarray | None) -> torch.Tensor | np.ndarray:
    """Reorder the frame axis (axis 1) of (B, T, P, D) tokens; ``None`` leaves them untouched."""
    if order is None:
        return tokens
    if len(order) != tokens.shape[1] or sorted(order.tolist()) != list(range(tokens.shape[1])):
        raise InputError(f"frame order {order.tolist()} is not a permutation of the {tokens.shape[1]} frames")
    if isinstance(tokens, torch.Tensor):
        return tokens[:, torch.as_tensor(order, device=tokens.device)]
    return tokens[:, order]
