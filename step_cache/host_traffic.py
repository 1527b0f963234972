"""Counting what would stall a GPU: device syncs and host tensors sent to the device, on any device (CPU too).

A CUDA hot loop stays fast while the host queues work ahead of the GPU. Two things break that: a **sync** (the
host waits for a device value: ``.item()``, ``bool(t)``, ``.tolist()``, ``.numpy()``, ``.cpu()``, or an op whose
output shape depends on device values, such as ``nonzero`` or boolean indexing), and a **host tensor** built from
Python or numpy data (``torch.tensor``, ``torch.as_tensor``, ``torch.from_numpy``), which on CUDA costs a
host-to-device copy every time it is used on the device.

``HostTraffic`` records both while it is active. It works on the CPU, where no GPU is lent: the ops it counts are
the ones that would sync or copy on CUDA, whatever device they run on (a ``TorchDispatchMode`` sees ``aten``
ops; ``tolist``/``numpy``/``cpu`` do not dispatch on CPU tensors, so they are wrapped while the counter runs).
Tensors that live on the host by design (torch's optimizers keep their step counters there, so reading them is no
device sync) are left out with ``exempt``. Only the thread that entered the counter is counted (dispatch modes are
per thread): work a helper thread does off the hot loop, such as the prefetch thread's, is not the loop's. On
CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` says the same of the syncs the driver sees; this counter also
catches host tensors and runs without a GPU.
"""

from __future__ import annotations

import functools
import threading
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that read a device value back (the host waits for the device) ...
_SYNC_OPS = {
    "aten._local_scalar_dense",  # .item(), bool(), int(), float()
    "aten.nonzero",  # output shape depends on the values
    "aten.masked_select",
    "aten.unique_consecutive",
    "aten._unique2",
    "aten.repeat_interleave",  # without output_size
}
# ... and the ones that make a tensor from host data (a host-to-device copy on CUDA).
_HOST_TENSOR_OPS = {"aten.lift_fresh", "aten.lift_fresh_copy"}
# Tensor methods that copy a device tensor to the host without going through the dispatcher on CPU tensors.
_READ_BACK_METHODS = ("tolist", "numpy", "cpu")


@dataclass(frozen=True)
class Event:
    """One counted op: what (``op``, e.g. ``aten._local_scalar_dense`` or ``Tensor.tolist``) and where (the
    innermost frame of step-cache's own code that caused it, ``file:line function``)."""

    kind: str  # "sync" or "host tensor"
    op: str
    where: str

    def __str__(self) -> str:
        return f"{self.kind} {self.op} at {self.where}"


class HostTraffic(TorchDispatchMode):
    """``with HostTraffic() as traffic: ...`` then ``traffic.syncs`` / ``traffic.host_tensors`` (lists of
    ``Event``). ``exempt``: tensors that live on the host by design; reading them back is not counted."""

    def __init__(self, exempt: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.syncs: list[Event] = []
        self.host_tensors: list[Event] = []
        self._exempt = {_storage(t) for t in exempt}
        self._saved: dict[str, Any] = {}
        self._thread = threading.get_ident()  # the dispatch mode is per thread: so are the wrappers' counts

    def __enter__(self) -> HostTraffic:
        self._thread = threading.get_ident()
        for name in _READ_BACK_METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._wrap(name, original))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    @property
    def events(self) -> list[Event]:
        return self.syncs + self.host_tensors

    def _wrap(self, name: str, original: Any) -> Any:
        @functools.wraps(original)
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self._thread and _storage(tensor) not in self._exempt:
                self.syncs.append(Event("sync", f"Tensor.{name}", _caller()))
            return original(tensor, *args, **kwargs)

        return counted

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = str(func.overloadpacket)
        if name in _SYNC_OPS or _boolean_index(name, args):
            if not (args and isinstance(args[0], torch.Tensor) and _storage(args[0]) in self._exempt):
                self.syncs.append(Event("sync", name, _caller()))
        elif name in _HOST_TENSOR_OPS:
            self.host_tensors.append(Event("host tensor", name, _caller()))
        return func(*args, **(kwargs or {}))


def _boolean_index(name: str, args: tuple) -> bool:
    """``t[mask]`` with a boolean mask: its output shape is the mask's count, a value on the device."""
    if name not in ("aten.index", "aten.index_put", "aten.index_put_") or len(args) < 2:
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())


def _storage(tensor: torch.Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # a tensor without storage (meta, functional): never exempt
        return -1


def _caller() -> str:
    """The innermost frame in step-cache (or bench/tests) that led to the op: what a failing test should name."""
    frames = traceback.extract_stack()[:-2]
    ours = [f for f in frames if "step_cache" in f.filename and "host_traffic" not in f.filename]
    frame = (ours or frames)[-1]
    return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} {frame.name}"


__all__ = ["Event", "HostTraffic"]
