"""Random backbone weights (``--weights random``): timm's seeded initialisation, for tests and the offline demo."""

from __future__ import annotations

from typing import Any

import torch


def random_model(timm_name: str, kwargs: dict[str, Any], seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """timm's seeded initialisation, except that a ViT's patch position embeddings become fixed 2-D sine-cosine
    features (as in MAE). timm draws them with std 0.02, about 2 % of a patch embedding's scale, so untrained tokens
    would hardly say where in the frame a patch is, which every trained backbone's tokens do; without it the offline
    demo's motion would be invisible to any probe."""
    import timm
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    torch.manual_seed(seed)
    model = timm.create_model(timm_name, pretrained=False, **kwargs)
    identity: dict[str, Any] = {"source": "random", "seed": seed}
    pos_embed = getattr(model, "pos_embed", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if isinstance(pos_embed, torch.nn.Parameter) and grid is not None:
        patches = grid[0] * grid[1]
        if pos_embed.shape[1] >= patches:
            with torch.no_grad():
                sincos = build_sincos2d_pos_embed(list(grid), pos_embed.shape[-1])
                pos_embed[:, pos_embed.shape[1] - patches :] = sincos.to(pos_embed.dtype)
            identity["pos_embed"] = "sincos-2d"
    return model, identity
