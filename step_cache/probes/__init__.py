"""Probes over cached tokens (B, T, P, D) -> logits (B, C), and their registry.

``build_probe(name, dim=..., num_classes=..., frames=..., tokens_per_frame=..., cls_index=..., **options)``
builds one; ``probe_options(name)`` lists the options a probe takes with their defaults.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from step_cache.probes.attentive import AttentiveProbe
from step_cache.probes.layers import SHAPE_ARGUMENTS, ProbeConfigError, ProbeInputError, ProbeShape, StackableDropout
from step_cache.probes.linear import LinearProbe
from step_cache.probes.self_attentive import SelfAttentiveProbe
from step_cache.probes.step import StepProbe
from step_cache.probes.vjepa import attentive_from_vjepa

__all__ = [
    "PROBES",
    "SHAPE_ARGUMENTS",
    "AttentiveProbe",
    "LinearProbe",
    "ProbeConfigError",
    "ProbeInputError",
    "ProbeShape",
    "SelfAttentiveProbe",
    "StackableDropout",
    "StepProbe",
    "attentive_from_vjepa",
    "build_probe",
    "count_parameters",
    "probe_options",
    "recorded_options",
]

PROBES: dict[str, type[nn.Module]] = {
    "linear": LinearProbe,
    "attentive": AttentiveProbe,
    "self-attentive": SelfAttentiveProbe,
    "step": StepProbe,
}

# A recorded attentive run without ``output_projection`` in its options was trained before the probe became
# V-JEPA's function (issue 24): a different function (query LayerNormed, output projection, final LayerNorm).
_OLD_ATTENTIVE = (
    "was trained with the attentive probe from before it became V-JEPA's (a LayerNormed query, an output "
    "projection and a final LayerNorm), which this step-cache no longer builds; train it again"
)


def _probe_class(name: str) -> type[nn.Module]:
    try:
        return PROBES[name]
    except KeyError:
        raise ProbeConfigError(f"unknown probe {name!r}; choose one of: {', '.join(PROBES)}") from None


def probe_options(name: str) -> dict[str, Any]:
    """The options probe ``name`` accepts, each with its default (``num_heads=None`` means D // 64)."""
    probe = _probe_class(name)
    own = {
        key: parameter.default
        for key, parameter in inspect.signature(probe.__init__).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and key not in SHAPE_ARGUMENTS
    }
    return {**getattr(probe, "shared_options", {}), **own}  # the attention probes' num_heads, dropout, mlp_ratio


def recorded_options(name: str, options: dict[str, Any], origin: str = "run") -> dict[str, Any]:
    """The options to rebuild a recorded run's probe with (``options`` as its config.json has them); raises
    ProbeConfigError naming ``origin`` for a run whose probe this step-cache no longer builds."""
    if name == "attentive" and "output_projection" not in options:
        raise ProbeConfigError(f"{origin} {_OLD_ATTENTIVE}")
    return dict(options)


def check_probe_options(name: str, options: dict[str, Any]) -> None:
    """Refuse an unknown probe, or an option probe ``name`` does not take, naming the valid ones."""
    valid = probe_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ProbeConfigError(
            f"probe {name!r} has no option {', '.join(unknown)}; its options are: {', '.join(valid) or 'none'}"
        )


def build_probe(
    name: str,
    *,
    dim: int,
    num_classes: int,
    frames: int,
    tokens_per_frame: int,
    cls_index: int | None,
    **options: Any,
) -> nn.Module:
    """Build probe ``name`` for a cache of (T=frames, P=tokens_per_frame, D=dim) tokens and C classes."""
    check_probe_options(name, options)
    return PROBES[name](
        dim=dim,
        num_classes=num_classes,
        frames=frames,
        tokens_per_frame=tokens_per_frame,
        cls_index=cls_index,
        **options,
    )


def count_parameters(module: nn.Module, exclude_head: bool = False) -> int:
    """Number of learnable values; with ``exclude_head``, without the classifier (attribute ``head``)."""
    total = sum(parameter.numel() for parameter in module.parameters())
    if exclude_head:
        total -= sum(parameter.numel() for parameter in module.head.parameters())
    return total
