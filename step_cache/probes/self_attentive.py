"""Self-attentive probe: full pre-norm transformer block(s) (multi-head self-attention + MLP) over
[CLS; all T·P tokens], classifying from the CLS output. No temporal position: permutation-invariant over frames.

It is a preset of STEP (``step.py``): STEP without frame embeddings and with the MLP. Its parameters keep their
names and shapes (``cls_token``, ``blocks``, ``norm``, ``head``), so checkpoints of the self-attentive probe trained
before it became a preset load unchanged (tested)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from step_cache.probes.step import StepProbe

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from step_cache.probes.layers import AttentionProbeArguments


class SelfAttentiveProbe(StepProbe):
    def __init__(self, *, depth: int = 1, **kwargs: Unpack[AttentionProbeArguments]) -> None:
        super().__init__(depth=depth, frame_pos=False, global_cls=True, mlp=True, **kwargs)
