"""A trained run ready for raw frames: the rebuilt backbone turns frames into tokens exactly as extraction did
(same preprocessing, same model, tokens rounded to the cache's dtype), and the probe turns windows of tokens into
logits exactly as ``evaluate`` does on a cache (the K clips of a window combined as the run's ``view_average``
says: the mean of their softmax, or of their logits)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from step_cache.cache.manifest import Manifest, ManifestError, read_manifest
from step_cache.cache.quantize import dequantize, is_quantized, read_dtype
from step_cache.devices import resolve_device
from step_cache.extraction.device_quantize import unpack
from step_cache.extraction.frame_batches import TokenComputer
from step_cache.recognition.settings import load_run_backbone
from step_cache.training.evaluation import load_probe, recorded_selection, run_view_average
from step_cache.training.inference import autocast


class RunModel:
    """Backbone + probe of a train-probe run directory (its best checkpoint)."""

    def __init__(
        self, run_dir: str | Path, *, weights: str | Path | None = None, device: str = "auto", amp: bool = True
    ):
        self.run_dir = Path(run_dir)
        self.record, probe = load_probe(run_dir)
        backbone, options = load_run_backbone(self.record, weights)
        self.device = resolve_device(device)
        self.amp = amp
        # int8 runs: quantized as extract does, then read back as the cache reader hands them out (float16)
        self.quantized = is_quantized(options.dtype)
        self.computer = TokenComputer(backbone, self.device, read_dtype(options.dtype).name, quantize=self.quantized)
        self.preprocessing = backbone.preprocessing
        self.probe = probe.to(self.device).eval()
        data = self.record["data"]
        self.classes: list[str] = list(data["classes"])
        self.frames: int = int(data["frames"])  # T per clip
        self.clips: int = int(data["extraction"]["sampling"]["clips"])  # K views per window
        # a frame-step cache's step: windows sample T frames that far apart, as extract did (windows.py)
        self.frame_step: int | None = data["extraction"]["sampling"].get("frame_step")
        self.view_average = run_view_average(self.record)
        self.selection = recorded_selection(self.record)  # its token subset, and layers of a cache of several

    def typical_duration(self) -> float | None:
        """Median duration (seconds) of the videos of the run's cache(s), when their manifests record it."""
        durations: dict[str, int] = {}
        for directory in self.record["data"].get("features", []):
            try:
                manifest = read_manifest(directory)
            except ManifestError:
                continue
            for seconds, count in manifest.durations.items():
                durations[seconds] = durations.get(seconds, 0) + count
        return Manifest(extraction={}, classes=[], durations=durations).typical_duration

    @torch.no_grad()
    def encode(self, frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, H, W, 3) RGB uint8 frames -> (N, [L,] P, D) tokens in the cache's dtype, as a numpy array (windows are
        gathered from them with numpy: torch's CPU stack of float16 tensors is ~1000x slower than a copy)."""
        pixels = self.preprocessing.resize_and_crop(np.stack(frames) if isinstance(frames, list) else frames)
        tokens, ready = self.computer(np.ascontiguousarray(pixels))
        if ready is not None:
            ready.synchronize()
        tokens = tokens.cpu().numpy()
        return dequantize(*unpack(tokens)) if self.quantized else tokens

    @torch.no_grad()
    def classify(self, windows: np.ndarray) -> np.ndarray:
        """(B, K, T, [L,] P, D) window tokens (the cache's dtype) -> (B, C) float32 scores whose softmax is the window's
        probabilities, as per video in ``evaluate``: the K clips' mean logits, or (``view_average`` softmax, K > 1) the
        log of their mean softmax; one clip's logits as they are."""
        batch, clips = windows.shape[:2]
        tokens = windows.reshape(batch * clips, *windows.shape[2:])
        if self.selection.layers is not None:  # frames of (L, P, D) -> clips of the run's layers, (L', T, P, D)
            tokens = np.moveaxis(tokens, 2, 1)[:, list(self.selection.layers)]
        tokens = self.selection.apply(tokens)
        # float16 -> float32 is exact, in numpy as in torch; on the CPU numpy's is the fast one, a GPU gets the
        # half-size tokens and converts them itself.
        if self.device.type == "cpu":
            tokens = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))
        else:
            tokens = torch.from_numpy(np.ascontiguousarray(tokens)).to(self.device, non_blocking=True).float()
        with autocast(self.device, self.amp):
            logits = self.probe(self.selection.merge_layers(tokens)).float()
        logits = logits.reshape(batch, clips, -1)
        if self.view_average == "softmax" and clips > 1:  # log(mean softmax): its softmax is the clips' mean softmax
            return (torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=1) - math.log(clips)).cpu().numpy()
        return logits.mean(dim=1).cpu().numpy()
