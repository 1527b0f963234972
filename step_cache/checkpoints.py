"""Loading a local model checkpoint safely: tensors only, never arbitrary pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

# Wrappers that training frameworks put around the weights (DINOv2 saves a "teacher", Lightning a "state_dict").
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "model_ema", "module", "student")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unsafe, or not a state dict of tensors."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` torch file with ``weights_only=True``.

    A pickle that needs anything but tensors and plain containers is refused without being executed.
    Framework wrappers (``{"state_dict": ...}``, ``{"teacher": ...}``) and ``module.``/``backbone.`` prefixes are
    removed so the keys match the timm model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError for damaged files
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(
                f"{path}: refusing to load: the pickle holds Python objects other than tensors, which could run "
                f"code ({str(error).splitlines()[0][:160]}). Convert it to .safetensors or a plain state dict."
            ) from None
        except Exception as error:  # noqa: BLE001 - corrupt or foreign file: name it and stop
            raise CheckpointError(
                f"{path}: not a readable torch checkpoint ({str(error).splitlines()[0][:200]})"
            ) from None
    return _unwrap(state, path)


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # wrappers can nest, e.g. {"model": {"state_dict": ...}}
        if isinstance(state, dict) and not _is_tensor_dict(state):
            inner = [k for k in _WRAPPER_KEYS if isinstance(state.get(k), dict)]
            if not inner:
                break
            state = state[inner[0]]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: not a state dict (top level is {type(state).__name__}, not name -> tensor)")
    if not _is_tensor_dict(state):
        bad = next(k for k, v in state.items() if not isinstance(v, torch.Tensor))
        raise CheckpointError(f"{path}: not a state dict of tensors (entry {bad!r} is {type(state[bad]).__name__})")
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers prefix every key
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # self-supervised checkpoints: keep the backbone, drop heads
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _is_tensor_dict(state: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
