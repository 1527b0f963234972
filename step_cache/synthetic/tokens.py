"""Synthetic token caches written straight into shards (no videos, no backbone), for tests and benchmarks.

Two tasks:
- ``order``: classes come in mirrored pairs (``rise_k`` / ``fall_k``); channel k of every token ramps up over the
  frames for ``rise_k`` and down for ``fall_k``. The multiset of frames is the same for both classes, so a probe
  that ignores frame order is at chance within each pair.
- ``static``: class c adds a constant offset to channel c of every token; any probe can learn it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from step_cache.cache.manifest import Manifest, TokenLayout, settings_hash, write_manifest
from step_cache.cache.shards import ClipRecord, ShardWriter, shard_name
from step_cache.cache.writer import storage_record


@dataclass
class SyntheticTokens:
    """What to generate. ``val_every`` / ``test_every``: every n-th video of a class gets split "val" / "test"
    (0: none; with neither, the split column is empty)."""

    task: str = "order"
    num_classes: int = 2
    videos_per_class: int = 12
    clips_per_video: int = 1
    frames: int = 4
    grid: tuple[int, int] = (2, 2)
    cls_tokens: int = 1
    dim: int = 16
    signal: float = 1.0
    noise: float = 0.5
    val_every: int = 0
    test_every: int = 0  # every n-th video of a class gets split "test" (before val_every is applied)
    clips_per_shard: int = 64
    seed: int = 0
    views: int = 0  # augmented views per training video: the clean tokens plus view_noise (as extract --views)
    view_noise: float = 0.25
    dtype: str = "float16"  # "int8": the writer quantizes the tokens, as extract --dtype int8 does
    patch_pool: int = 1  # recorded only (the grid is the pooled one): benchmarks label a pooled cache with it
    layers: tuple[int, ...] | None = None  # stored blocks (extract --layers): a layer axis, each its own noise
    group_size: int = 0  # n > 0: UCF101-style names v_<class>_gGG_cCC, n videos per group (datasets.groups)

    @property
    def layout(self) -> TokenLayout:
        return TokenLayout(cls_tokens=self.cls_tokens, grid=self.grid, dim=self.dim, dtype=self.dtype,
                           patch_pool=self.patch_pool, layers=self.layers)  # fmt: skip

    def class_names(self) -> list[str]:
        if self.task == "order":
            if self.num_classes % 2:
                raise ValueError("the order task needs an even number of classes (mirrored pairs)")
            return [f"{kind}_{k}" for k in range(self.num_classes // 2) for kind in ("rise", "fall")]
        return [f"class_{c}" for c in range(self.num_classes)]

    def extraction(self) -> dict:
        return {
            "backbone": {"name": "synthetic", "task": self.task, "seed": self.seed},
            "weights": {"source": "none"},
            "preprocessing": {},
            "sampling": {"frames": self.frames, "clips": self.clips_per_video, "strategy": "synthetic"},
            "tokens": self.layout.to_dict(),
            **({"views": {"count": self.views, "kind": "synthetic", "noise": self.view_noise}} if self.views else {}),
        }

    def clip(self, label: int, rng: np.random.Generator) -> np.ndarray:
        shape = (self.frames, self.layout.tokens_per_frame, self.dim)
        if self.layers is not None:  # (L, T, P, D): every layer carries the signal under its own noise
            shape = (len(self.layers), *shape)
        tokens = rng.standard_normal(shape, dtype=np.float32) * self.noise
        if self.task == "order":
            ramp = np.linspace(-1.0, 1.0, self.frames) * self.signal
            tokens[..., (label // 2) % self.dim] += (ramp if label % 2 == 0 else ramp[::-1])[:, None]
        else:
            tokens[..., label % self.dim] += self.signal
        return tokens.astype(np.float16)

    def video_name(self, name: str, video: int) -> str:
        if self.group_size:
            group, clip = divmod(video, self.group_size)
            return f"{name}/v_{name}_g{group + 1:02d}_c{clip + 1:02d}.avi"
        return f"{name}/{name}_{video:04d}.mp4"

    def augmented(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A stand-in for an augmented view: the clean tokens plus Gaussian noise."""
        noise = rng.standard_normal(tokens.shape, dtype=np.float32) * self.view_noise
        return (tokens.astype(np.float32) + noise).astype(np.float16)


def write_token_cache(directory: str | Path, spec: SyntheticTokens | None = None, **overrides: object) -> Manifest:
    """Write a complete shard directory for ``spec`` (fields may be overridden by keyword)."""
    spec = spec or SyntheticTokens()
    if overrides:
        spec = SyntheticTokens(**{**spec.__dict__, **overrides})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    classes = spec.class_names()
    pairs = [(classes[i], classes[i + 1]) for i in range(0, len(classes), 2)] if spec.task == "order" else []
    manifest = Manifest(extraction=spec.extraction(), classes=classes, pairs=pairs)
    manifest.storage = storage_record(manifest, "none")  # a new cache: with the CLS copy, as extract writes it
    rng = np.random.default_rng(spec.seed)
    # The views' noise has a generator of its own, so the clean tokens are the same with or without views (as
    # extract's clean view is): a cache with views compares exactly with the same cache without them.
    view_rng = np.random.default_rng([spec.seed, 1])
    writer: ShardWriter | None = None
    # Videos interleaved by class, so every shard (and any prefix of the cache) holds every class.
    for video in range(spec.videos_per_class):
        for label in range(len(classes)):
            split = ""
            if spec.test_every and video % spec.test_every == spec.test_every - 1:
                split = "test"
            elif spec.val_every and video % spec.val_every == spec.val_every - 1:
                split = "val"
            elif spec.val_every or spec.test_every:
                split = "train"
            for clip in range(spec.clips_per_video):
                if writer is None:
                    writer = ShardWriter(
                        directory, shard_name(len(manifest.shards)), spec.layout, spec.frames,
                        settings=settings_hash(manifest.extraction), views=spec.views > 0, classes=classes,
                        cls_copy=bool(manifest.storage.get("cls_copy")),
                    )  # fmt: skip
                record = ClipRecord(
                    tokens=spec.clip(label, rng),
                    label=label,
                    # class-prefixed names, as make-demo's: the videos of a pair's two classes are different
                    # videos, so they share no file name (the val hold-out links same-named files of a pair)
                    video=spec.video_name(classes[label], video),
                    clip=clip,
                    split=split,
                    frame_indices=np.arange(spec.frames) * 4 + clip,
                    num_frames=spec.frames * 4 + spec.clips_per_video,
                    short=False,
                )
                # Augmented views of training videos only, appended with the clean clip (one video, one shard).
                views = [
                    replace(record, tokens=spec.augmented(record.tokens, view_rng), view=view,
                            view_params=json.dumps({"noise": spec.view_noise}))
                    for view in range(1, spec.views + 1)
                ] if split in ("train", "") else []  # fmt: skip
                writer.append_video([record, *views])
                if writer.count >= spec.clips_per_shard:
                    manifest.shards.append(writer.finish())
                    writer = None
    if writer is not None:
        manifest.shards.append(writer.finish())
    write_manifest(directory, manifest)
    return manifest
