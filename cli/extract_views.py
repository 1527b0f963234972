"""The ``--views`` options of ``step-cache extract`` (augmented views stored beside each training clip), declared
apart from the command so its function stays short."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def view_options(
    views: Annotated[
        int,
        typer.Option(
            min=0,
            help="Augmented views stored per training video (split 'train' or none) besides the clean view; val/test "
            "videos keep the clean view only. Each view: a random resized crop, frames jittered within their "
            "segments, optional colour jitter and flips, drawn from an RNG seeded by --view-seed, the video and the "
            "view (a resumed run draws the same). Training draws one view per video per epoch. Shard format 3.",
        ),
    ] = 0,
    view_scale: Annotated[
        str,
        typer.Option(
            help="LO,HI: area fraction of the frame a view's crop covers (timm's RandomResizedCrop scale). Default: "
            "the range of V-JEPA's pretraining crops, milder than the 0.08,1 of ImageNet and of V-JEPA's frozen "
            "evaluation (which also adds RandAugment and random erasing, afresh every epoch), as 0.08 often crops "
            "the action away."
        ),
    ] = "0.3,1.0",
    view_ratio: Annotated[
        str, typer.Option(help="LO,HI: aspect ratio (width/height) range of a view's crop, drawn log-uniformly.")
    ] = "0.75,1.35",
    view_span: Annotated[
        float | None,
        typer.Option(help="Sample a view's frames from a random sub-span of at least this fraction of the video."),
    ] = None,
    view_colour: Annotated[
        float, typer.Option(help="Colour jitter S: brightness, contrast, saturation factors in [1-S, 1+S] (0: off).")
    ] = 0.0,
    view_flip: Annotated[
        bool,
        typer.Option(
            help="Flip views horizontally with p = 0.5. Off by default: a flip turns 'slide left' into 'slide "
            "right'. Without --flip-pairs a flipped view keeps its label."
        ),
    ] = False,
    flip_pairs: Annotated[
        Path | None, typer.Option(help="With --view-flip: lines 'slide_left,slide_right' whose labels a flip swaps.")
    ] = None,
    view_seed: Annotated[int, typer.Option(help="Seed of the augmented views.")] = 0,
    test_views: Annotated[
        str | None,
        typer.Option(
            help="SEGMENTSxCROPS test-time views of val/test videos, made as V-JEPA's frozen evaluation makes them: "
            "S temporal segments (as --clips, or --frame-step windows) x C square crops along the long side of the "
            "frame resized to the crop size on its short side. V-JEPA's K400 protocol: 8x3; V-JEPA 2's SSv2: 2x3. "
            "Training videos keep their --clips. Evaluation averages the views' softmax per video by default "
            "(train-probe --view-average). Shard format 5. Default: none (val/test videos get --clips, centre crop).",
        ),
    ] = None,
    frame_step: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Sample the T frames of a clip S frames apart (the anchors' frame_step, e.g. 4), the window in the "
            "middle of each of the --clips (or test-view) segments. Default: none, the centres of T equal segments.",
        ),
    ] = None,
) -> None:
    """Declares the options only (``cli.options.spliced_options`` adds them to extract)."""


def extract_views(
    views: int,
    view_scale: str,
    view_ratio: str,
    view_span: float | None,
    view_colour: float,
    view_flip: bool,
    flip_pairs: Path | None,
    view_seed: int,
    test_views: str | None = None,
    frame_step: int | None = None,
) -> dict[str, Any]:
    """The view options as ``extraction.engine.extract`` takes them."""
    return {
        "test_views": test_views,
        "frame_step": frame_step,
        "views": views,
        "view_scale": _range(view_scale, "--view-scale"),
        "view_ratio": _range(view_ratio, "--view-ratio"),
        "view_span": view_span,
        "view_colour": view_colour,
        "view_flip": view_flip,
        "flip_pairs": flip_pairs,
        "view_seed": view_seed,
    }


def _range(text: str, option: str) -> tuple[float, float]:
    """'LO,HI' -> (LO, HI)."""
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected LO,HI (two numbers), got {text!r}", param_hint=option) from None
    return lo, hi
