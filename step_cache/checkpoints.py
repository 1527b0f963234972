"""Loading a local model checkpoint safely: tensors only, never arbitrary pickled code."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from step_cache.errors import StepCacheError

# Wrappers that training frameworks put around the weights (DINOv2 saves a "teacher", Lightning a "state_dict").
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "model_ema", "module", "student")


class CheckpointError(StepCacheError, ValueError):
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
            with warnings.catch_warnings():  # a second line about the pickle protocol: the error below says it all
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - unsafe, corrupt or foreign file: say which, name it and stop
            raise CheckpointError(f"{path}: {_why_unloadable(path, error)}") from None
    return _unwrap(state, path)


# Modules whose globals torch's weights-only loader may accept; a pickle naming others wants to build objects.
_TENSOR_MODULES = {"torch", "collections", "_codecs", "numpy"}  # top-level packages (torch.*, not torchvision)
_PICKLE_PREFIX = 16 << 20  # bytes read to classify a refused file: its globals come first, tensor data after
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _why_unloadable(path: Path, error: Exception) -> str:
    """One line saying what the file is, from its bytes rather than from torch's message: a pickle that names
    Python callables (could run code: refused), a file that is no checkpoint at all, or a damaged checkpoint."""
    kind, data = _pickle_bytes(path)
    if kind == "zip-damaged":
        return f"a damaged torch checkpoint ({_first_sentence(error)}); save or copy it again"
    if kind == "zip-foreign":
        return "a zip archive but not a torch checkpoint (it holds no data.pkl)"
    globals_named = _pickle_globals(data) if data is not None else None
    if globals_named is None:
        return (
            "not a torch checkpoint (neither a torch.save archive nor a complete pickle); give a .safetensors file "
            "or a state dict saved with torch.save"
        )
    unsafe = sorted({name for name in globals_named if name.split(".")[0] not in _TENSOR_MODULES})
    if unsafe:
        shown = ", ".join(unsafe[:3]) + (" ..." if len(unsafe) > 3 else "")
        return (
            f"refusing to load: the pickle names Python objects other than tensors ({shown}), which could run code; "
            "convert it to .safetensors or a plain state dict of tensors"
        )
    return f"not a readable torch checkpoint ({_first_sentence(error)})"


def _pickle_bytes(path: Path) -> tuple[str, bytes | None]:
    """('zip', data.pkl) for a torch.save archive, ('raw', the file) otherwise, or a zip that is damaged/foreign.
    At most ``_PICKLE_PREFIX`` bytes of the pickle are read (a checkpoint may be gigabytes)."""
    import zipfile

    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [name for name in archive.namelist() if name.endswith("data.pkl")]
                if not names:
                    return "zip-foreign", None
                with archive.open(names[0]) as member:
                    return "zip", member.read(_PICKLE_PREFIX)
        except (zipfile.BadZipFile, OSError, EOFError):
            return "zip-damaged", None
    with path.open("rb") as file:
        data = file.read(_PICKLE_PREFIX)
    if data.startswith(b"PK\x03\x04"):  # a zip's first entry but no readable directory: a cut-short archive
        return "zip-damaged", None
    return "raw", data


def _pickle_globals(data: bytes) -> list[str] | None:
    """'module.name' of every global the first pickle in ``data`` names, without running it; None when ``data``
    does not start with a whole pickle (random bytes, text). A pickle cut off at ``_PICKLE_PREFIX`` bytes gives
    the globals named before the cut. For STACK_GLOBAL the module and name are the two strings pushed last, which is
    how pickle writes them (a memoised repeat may show an older pair: the list is for the message, the refusal
    itself is torch's)."""
    import io
    import pickletools

    names: list[str] = []
    strings: list[str] = []
    stream = io.BytesIO(data)
    try:
        for opcode, argument, _position in pickletools.genops(stream):
            if opcode.name in _STRING_OPS:
                strings.append(str(argument))
            elif opcode.name in ("GLOBAL", "INST"):
                names.append(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]))
    except Exception:  # noqa: BLE001 - pickletools raises ValueError and others on bytes that are no pickle
        cut_by_prefix = len(data) >= _PICKLE_PREFIX and stream.tell() >= len(data)  # it ran out of bytes, not sense
        return names if cut_by_prefix and names else None
    return names


def _first_sentence(error: Exception) -> str:
    """The first sentence of an error's first non-empty line (torch's messages run on over several)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text.split(". ")[0].rstrip(".")


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
