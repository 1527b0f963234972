"""The shard rows of one extracted video: its K clean clips, then K clips of each augmented view (``--views``)."""

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
) -> list[ClipRecord]:
    """Rows for ``tokens`` (F, P, D) or (F, L, P, D), F = (1 + views) x clips x frames in the order the decoder
    produced them.

    A view's rows carry its own frame numbers and, in ``view_params``, what was drawn for it (crop box, flip,
    colour factors, sub-span, and the clip's frame numbers); a flipped view of a class with a mirror in the flip
    pairs is labelled with the mirror class."""
    tokens = tokens.reshape(1 + len(result.view_params), clips, frames, *tokens.shape[1:])
    if tokens.ndim == 6:  # several layers: (views, clips, T, L, P, D) -> clips of (L, T, P, D), as shards store them
        tokens = tokens.swapaxes(2, 3)

    def label_of(name: str | None) -> int:
        return label_index.get(name, -1) if name else -1

    records = [
        ClipRecord(
            tokens=tokens[0, k], label=label_of(item.label), video=item.key, clip=k, split=item.split or "",
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
                tokens=tokens[view, k], label=label, video=item.key, clip=k, split=item.split or "",
                frame_indices=indices[k], num_frames=result.num_frames, short=short, view=view,
                view_params=params_json({**shared, "clip": k, "frame_indices": indices[k].tolist()}),
            )
            for k in range(clips)
        ]  # fmt: skip
    return records
