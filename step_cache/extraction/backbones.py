"""Frozen image backbones from timm: a registry of short names, weight loading, and per-frame token output."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

from step_cache.cache.files import file_sha256
from step_cache.cache.manifest import TokenLayout
from step_cache.checkpoints import CheckpointError, load_state_dict_file
from step_cache.errors import StepCacheError
from step_cache.extraction.layer_tokens import intermediate_features, model_blocks
from step_cache.extraction.preprocess import Preprocessing
from step_cache.extraction.random_weights import random_model
from step_cache.interface import option


class BackboneError(StepCacheError, ValueError):
    """An unknown backbone name or unusable backbone settings."""


class WeightsUnavailableError(StepCacheError, RuntimeError):
    """Pretrained weights were asked for but cannot be obtained (typically: offline)."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _dinov2(size: str, dim_name: str, registers: bool) -> BackboneSpec:
    reg = "_reg4" if registers else ""
    # DINOv2's pretrained config says 518 px; video probing uses 224 px frames (timm resamples the position grid).
    return BackboneSpec(
        name=f"dinov2-{size}{'-reg' if registers else ''}",
        timm_name=f"vit_{dim_name}_patch14{reg}_dinov2.lvd142m",
        kwargs={"img_size": 224},
        description=f"DINOv2 ViT-{size.upper()}/14{' with 4 registers' if registers else ''}, 224 px",
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        *(
            _dinov2(s, d, r)
            for s, d in [("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant")]
            for r in (False, True)
        ),
        BackboneSpec("clip-b16", "vit_base_patch16_clip_224.openai", description="OpenAI CLIP ViT-B/16"),
        BackboneSpec("clip-l14", "vit_large_patch14_clip_224.openai", description="OpenAI CLIP ViT-L/14"),
        BackboneSpec(
            "vit-tiny",
            "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
            description="small ViT-Ti/16 (D=192): the offline demo and tests use it random-initialised",
        ),
    ]
}
ALIASES = {"dinov2": "dinov2-b", "clip": "clip-b16"}


def resolve_backbone(name: str) -> BackboneSpec:
    """Short name (``dinov2-s``, ``clip``...) or ``timm:<model name>`` -> spec."""
    if name.startswith("timm:"):
        timm_name = name[len("timm:") :]
        import timm

        if not timm_name or not timm.is_model(timm_name.split(".")[0]):
            raise BackboneError(f"timm has no model named {timm_name!r} (see timm.list_models())")
        return BackboneSpec(name=name, timm_name=timm_name, description=f"timm model {timm_name}")
    key = ALIASES.get(name, name)
    if key not in BACKBONES:
        choices = ", ".join([*BACKBONES, *ALIASES])
        raise BackboneError(f"unknown backbone {name!r}; choose one of {choices}, or timm:<model name>")
    return BACKBONES[key]


@dataclass
class Backbone:
    """A frozen timm model that maps normalised frames to per-frame tokens (CLS first, then pooled patches)."""

    spec: BackboneSpec
    model: torch.nn.Module
    preprocessing: Preprocessing
    weights: dict[str, Any]
    cls_tokens: int
    prefix_tokens: int
    registers: int
    patch_pool: int = 1
    layout: TokenLayout | None = None
    layers: tuple[int, ...] | None = None  # blocks stored (extract --layers); None: the last block's output only

    def forward_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised frames -> (B, P, D) last-layer normalised tokens, registers dropped; with
        ``layers``, (B, L, P, D): each chosen block's tokens, final-normalised, laid out alike (``layer_tokens``)."""
        if self.layers is not None:
            return torch.stack(
                [self._frame_tokens(f) for f in intermediate_features(self.model, frames, self.layers)], 1
            )
        return self._frame_tokens(self.model.forward_features(frames))

    def _frame_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """``forward_features``-style output -> (B, P, D): CLS first, then the (pooled) patch grid."""
        if features.ndim == 4:  # convolutional backbone: (B, C, H, W) -> patch tokens
            grid = features
            cls = features.new_zeros(features.shape[0], 0, features.shape[1])
        else:
            cls = features[:, : self.cls_tokens]
            patches = features[:, self.prefix_tokens :]
            height, width = self._vit_grid(patches.shape[1])
            grid = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], height, width)
        if self.patch_pool > 1:
            grid = F.avg_pool2d(grid, self.patch_pool, self.patch_pool, ceil_mode=True)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)

    def _vit_grid(self, num_patches: int) -> tuple[int, int]:
        grid = getattr(getattr(self.model, "patch_embed", None), "grid_size", None)
        if grid is not None and grid[0] * grid[1] == num_patches:
            return int(grid[0]), int(grid[1])
        side = round(num_patches**0.5)
        if side * side != num_patches:
            raise BackboneError(f"{self.spec.timm_name}: cannot lay {num_patches} patch tokens out on a grid")
        return side, side

    def patch_grid(self, frames: torch.Tensor) -> tuple[int, int]:
        """Patch grid (before pooling) the model produces for frames of this size."""
        features = self.model.forward_features(frames)
        if features.ndim == 4:
            return int(features.shape[2]), int(features.shape[3])
        return self._vit_grid(features.shape[1] - self.prefix_tokens)

    def info(self) -> dict[str, Any]:
        return {"name": self.spec.name, "timm_model": self.spec.timm_name, "kwargs": self.spec.kwargs}


def load_backbone(
    name: str,
    weights: str = "hub",
    image_size: int | None = None,
    patch_pool: int = 1,
    seed: int = 0,
    dtype: str = "float16",
    layers: str = "last",
) -> Backbone:
    """Build the frozen backbone ``name`` with ``weights``: ``hub`` (timm pretrained download), ``random``
    (seeded initialisation, for tests and the offline demo) or a path to a local ``.safetensors``/``.pth`` file.
    ``layers``: the blocks whose tokens it hands out (``step_cache.cache.layers``; ``last``: the last only)."""
    from timm.data import resolve_model_data_config

    spec = resolve_backbone(name)
    kwargs = {**spec.kwargs, "num_classes": 0}
    if image_size is not None and image_size < 1:
        raise BackboneError(f"{option('image_size', image_size)} must be >= 1")
    if image_size is not None:
        kwargs["img_size"] = image_size
    if patch_pool < 1:
        raise BackboneError(f"{option('pool_patches')} must be >= 1, got {patch_pool}")
    if image_size is not None and not _accepts_img_size(spec.timm_name):
        kwargs.pop("img_size")  # e.g. a CNN: any input size works, only the crop changes
    try:
        if weights == "random":
            model, identity = random_model(spec.timm_name, kwargs, seed)
        elif weights == "hub":
            model, identity = _from_hub(spec, kwargs)
        else:
            model, identity = _from_file(spec, kwargs, Path(weights))
    except TypeError as error:  # e.g. img_size for a model that has no such argument
        raise BackboneError(f"cannot build {spec.timm_name} with {kwargs}: {error}") from None
    model.eval().requires_grad_(False)

    config = resolve_model_data_config(model)
    size = _model_input_size(model, config, image_size)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch and (size[0] < patch[0] or size[1] < patch[1]):  # no patch at all: the probe forward would crash
        raise BackboneError(f"{spec.timm_name}: {option('image_size', image_size)} gives {size[0]}x{size[1]} px "
                            f"frames, smaller than one {patch[0]}x{patch[1]} px patch")  # fmt: skip
    preprocessing = Preprocessing.from_timm_config(config, crop=size)
    backbone = Backbone(
        spec=spec,
        model=model,
        preprocessing=preprocessing,
        weights=identity,
        cls_tokens=1 if getattr(model, "has_class_token", False) else 0,
        prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
        registers=int(getattr(model, "num_reg_tokens", 0)),
        patch_pool=patch_pool,
        layers=model_blocks(model, layers),
    )
    backbone.layout = _probe_layout(backbone, size, dtype)
    return backbone


def _accepts_img_size(timm_name: str) -> bool:
    import inspect

    import timm

    entrypoint = timm.models.model_entrypoint(timm_name.split(".")[0])
    module = inspect.getmodule(entrypoint)
    # ViT-family models take img_size; their model classes name it in __init__.
    return any(
        "img_size" in inspect.signature(obj.__init__).parameters
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module)
    )


def _model_input_size(model: torch.nn.Module, config: dict[str, Any], requested: int | None) -> tuple[int, int]:
    """(height, width) of the frames the model takes."""
    patch_embed = getattr(model, "patch_embed", None)
    img_size = getattr(patch_embed, "img_size", None)
    if img_size:  # the size the model was built for, which may differ from its pretrained config's
        if isinstance(img_size, (tuple, list)):
            return int(img_size[-2]), int(img_size[-1])
        return int(img_size), int(img_size)
    if requested:
        return requested, requested
    return int(config["input_size"][-2]), int(config["input_size"][-1])


def _probe_layout(backbone: Backbone, size: tuple[int, int], dtype: str) -> TokenLayout:
    """Run one blank frame through the model to learn the token grid and width."""
    with torch.inference_mode():
        tokens = backbone.forward_tokens(torch.zeros(1, 3, *size))
        height, width = backbone.patch_grid(torch.zeros(1, 3, *size))
    pool = backbone.patch_pool
    grid = (-(-height // pool), -(-width // pool))
    if backbone.cls_tokens + grid[0] * grid[1] != tokens.shape[-2]:
        raise BackboneError(f"{backbone.spec.timm_name}: unexpected token output of shape {tuple(tokens.shape)}")
    return TokenLayout(
        cls_tokens=backbone.cls_tokens,
        grid=grid,
        dim=int(tokens.shape[-1]),
        dtype=dtype,
        registers_dropped=backbone.registers,
        patch_pool=backbone.patch_pool,
        layers=backbone.layers,
    )


def _from_file(spec: BackboneSpec, kwargs: dict[str, Any], path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    import timm

    state = load_state_dict_file(path)
    model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    # timm's own checkpoint filter for this architecture converts original key names (e.g. Facebook DINOv2,
    # OpenAI CLIP) and resamples position embeddings, exactly as for a hub download.
    filter_fn = _checkpoint_filter(spec.timm_name)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except TypeError:
            state = filter_fn(state)
        except (KeyError, RuntimeError, ValueError) as error:
            raise CheckpointError(f"{path}: weights do not fit {spec.timm_name}: {error}") from None
    # We build the model without a classifier: drop one the checkpoint may carry.
    classifier = getattr(timm.models.get_pretrained_cfg(spec.timm_name), "classifier", None) or "head"
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    # Strict on purpose (timm's pretrained path is not when the classifier differs): a key that does not load
    # would silently leave random weights in a "pretrained" backbone.
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not fit {spec.timm_name}: {len(result.missing_keys)} missing key(s) "
            f"{_first(result.missing_keys)}, {len(result.unexpected_keys)} unexpected {_first(result.unexpected_keys)}"
        )
    return model, {"source": "file", "path": str(path.resolve()), "sha256": file_sha256(path)}


def _first(keys: list[str], count: int = 3) -> str:
    return "(" + ", ".join(keys[:count]) + (", ..." if len(keys) > count else "") + ")" if keys else ""


def _checkpoint_filter(timm_name: str) -> Any:
    import inspect

    import timm

    module = inspect.getmodule(timm.models.model_entrypoint(timm_name.split(".")[0]))
    return getattr(module, "checkpoint_filter_fn", None)


def _from_hub(spec: BackboneSpec, kwargs: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsUnavailableError(f"timm has no pretrained weights for {spec.timm_name}; pass {option('weights')}")
    identity = {"source": "hub", "timm_model": spec.timm_name, "hf_hub_id": cfg.hf_hub_id, "url": cfg.url}
    cached = _hub_cache_file(cfg.hf_hub_id) if cfg.hf_hub_id else None
    if cached is not None:  # already downloaded: load it without touching the network
        model, _ = _from_file(spec, kwargs, cached)
        return model, {**identity, "sha256": file_sha256(cached)}
    _require_network(spec, cfg.hf_hub_id, cfg.url)
    try:
        model = timm.create_model(spec.timm_name, pretrained=True, **kwargs)
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        raise WeightsUnavailableError(_offline_message(spec, f"download failed: {error}")) from None
    downloaded = _hub_cache_file(cfg.hf_hub_id) if cfg.hf_hub_id else None
    if downloaded is not None:  # the same identity as a later run that loads this file from the cache
        identity["sha256"] = file_sha256(downloaded)
    return model, identity


def _hub_cache_file(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _require_network(spec: BackboneSpec, hub_id: str | None, url: str | None) -> None:
    """Fail in seconds, not after the hub client's minute of retries, when the weights' host is unreachable."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") and hub_id:
        raise WeightsUnavailableError(_offline_message(spec, "HF_HUB_OFFLINE is set"))
    if hub_id:
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    else:
        host = urlparse(url or "").hostname or ""
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as error:
        raise WeightsUnavailableError(_offline_message(spec, f"cannot reach {host}: {error}")) from None


def _offline_message(spec: BackboneSpec, reason: str) -> str:
    return (  # option: weights= from Python, --weights from the command line
        f"cannot get pretrained weights for {spec.name} ({spec.timm_name}) from the hub ({reason}). On an offline "
        f"machine, download the checkpoint elsewhere (e.g. the model.safetensors of https://huggingface.co/timm/"
        f"{spec.timm_name}) and pass it with {option('weights', '/path/to/model.safetensors')} (.pth also works); "
        f"{option('weights', 'random')} gives an untrained backbone for tests only."
    )
