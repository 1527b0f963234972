"""``step-cache prepare DATASET --root DIR --out annotations.csv``: a public dataset's annotations -> our CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import DATA_PANEL, app
from cli.console import user_errors
from step_cache.datasets import ADAPTERS, prepare

# docs/datasets.md, "Held-out splits keep groups whole"
_GROUPS = (
    ", never splitting a group (all segments of a video, a UCF101 v_X_gNN group, an HMDB51 source movie, a "
    "Drive&Act participant, same-named files across class folders; docs/datasets.md)."
)
_DATASETS_HELP = "; ".join(f"{name}: {adapter.description}" for name, adapter in ADAPTERS.items())


@app.command(
    "prepare",
    rich_help_panel=DATA_PANEL,
    short_help="Write the annotation CSV (and pairs.txt) of a public dataset (SSv2, Diving48, UCF101, ...).",
    help=f"Write the annotation CSV (and pairs.txt) of a public dataset.\n\n{_DATASETS_HELP}.",
)
def prepare_command(
    dataset: Annotated[str, typer.Argument(help=f"One of: {', '.join(ADAPTERS)}.")],
    root: Annotated[Path, typer.Option("--root", help="The dataset's root directory (annotations and videos).")],
    out: Annotated[Path, typer.Option("--out", help="Annotation CSV to write; pairs.txt goes beside it.")],
    split: Annotated[
        int | None, typer.Option("--split", help="Official split number (UCF101/HMDB51 1-3, Drive&Act 0-2).")
    ] = None,
    annotations: Annotated[
        Path | None, typer.Option("--annotations", help="Annotation files' folder, if not the usual one under --root.")
    ] = None,
    videos: Annotated[
        Path | None, typer.Option("--videos", help="Videos root, if not --root; CSV paths are relative to it.")
    ] = None,
    view: Annotated[
        str | None, typer.Option("--view", help="Camera view (Drive&Act: e.g. kinect_color; IKEA-ASM: dev1/dev2/dev3).")
    ] = None,
    use_frame_ranges: Annotated[
        bool, typer.Option("--use-frame-ranges", help="Diving48: keep start_frame/end_frame as segments.")
    ] = False,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help=f"Hold out this stratified part of train as val{_GROUPS}")
    ] = 0.0,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help=f"Hold out this stratified part of train as test{_GROUPS}")
    ] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the held-out draw.")] = 0,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail if a listed video is missing (default: skip it and report).")
    ] = False,
    pairs_out: Annotated[Path | None, typer.Option("--pairs-out", help="Where to write pairs.txt.")] = None,
) -> None:
    with user_errors():
        result = prepare(
            dataset,
            root,
            out,
            split,
            annotations=annotations,
            videos=videos,
            view=view,
            use_frame_ranges=use_frame_ranges,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            strict=strict,
            pairs_out=pairs_out,
        )
    typer.echo(result.summary())
