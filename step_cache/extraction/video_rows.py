"""The shard rows of one extracted video: its K clean clips, then K clips of each augmented view (``--views``);
a val/test video with test views (``--test-views SxC``): S segments x C crops, segment-major."""

from __future__ import annotations

import numpy as np

from step_cache.cache.shard_file import ClipRecord
from step_cache.catalog import VideoItem
from step_cache.extraction.decode_pool import DecodeResult
from step_cache.extraction.views import params_json, view_label


def video_records(
    tokens: np.ndarray,
    item: VideoItem,
    result: DecodeResult,
    label_index: dict[str, int],
    clips: int,
    frames: int,
    swap: dict[str, str] | None = None,
    scales: np.ndarray | None = None,
) -> list[ClipRecord]:
    """Rows for ``tokens`` (F, P, D) or (F, L, P, D), F = (1 + views) x clips x frames in the order the decoder
    produced them.

    A view's rows carry its own frame numbers and, in ``view_params``, what was drawn for it (crop box, flip,
    colour factors, sub-span, and the clip's frame numbers); a flipped view of a class with a mirror in the flip
    pairs is labelled with the mirror class. ``scales`` (F, P): int8 tokens already quantized (on the device)."""

    def label_of(name: str | None) -> int:
        return label_index.get(name, -1) if name else -1

    if result.crops > 1 or result.frame_indices.shape[0] != clips:  # test views: the decoder's segments
        segments = result.frame_indices.shape[0]
        grid, grid_scales = _per_clip(tokens, scales, (segments, result.crops, frames))
        return [
            ClipRecord(
                tokens=grid[s, c], scales=None if grid_scales is None else grid_scales[s, c],
                label=label_of(item.label), video=item.key, clip=s, split=item.split or "",
                frame_indices=result.frame_indices[s], num_frames=result.num_frames, short=result.short, crop=c,
            )
            for s in range(segments)
            for c in range(result.crops)
        ]  # fmt: skip
    tokens, scales = _per_clip(tokens, scales, (1 + len(result.view_params), clips, frames))

    def scales_of(view: int, k: int) -> np.ndarray | None:
        return None if scales is None else scales[view, k]

    records = [
        ClipRecord(
            tokens=tokens[0, k], scales=scales_of(0, k), label=label_of(item.label), video=item.key, clip=k,
            split=item.split or "",
            frame_indices=result.frame_indices[k], num_frames=result.num_frames, short=result.short,
        )
        for k in range(clips)
    ]  # fmt: skip
    for view, params in enumerate(result.view_params, start=1):
        label = label_of(view_label(item.label, params, swap or {}))
        indices = np.asarray(params["frame_indices"], dtype=np.int64)
        short = result.short or params["span"][1] - params["span"][0] < frames  # a sub-span shorter than T
        shared = {key: value for key, value in params.items() if key != "frame_indices"}
        records += [
            ClipRecord(
                tokens=tokens[view, k], scales=scales_of(view, k), label=label, video=item.key, clip=k,
                split=item.split or "",
                frame_indices=indices[k], num_frames=result.num_frames, short=short, view=view,
                view_params=params_json({**shared, "clip": k, "frame_indices": indices[k].tolist()}),
            )
            for k in range(clips)
        ]  # fmt: skip
    return records


def _per_clip(
    tokens: np.ndarray, scales: np.ndarray | None, lead: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Tokens (F, [L,] P, D) and their int8 scales (F, [L,] P) as (a, b, T, ...) with F = a b T; with a layer axis,
    each clip as shards store it, (L, T, P, D)."""
    tokens = tokens.reshape(*lead, *tokens.shape[1:])
    scales = None if scales is None else scales.reshape(tokens.shape[:-1])
    if tokens.ndim == 6:  # several layers: (a, b, T, L, P, D) -> (a, b, L, T, P, D)
        tokens = tokens.swapaxes(2, 3)
        scales = None if scales is None else scales.swapaxes(2, 3)
    return tokens, scales
